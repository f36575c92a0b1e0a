#!/usr/bin/env bash
# The prepared GPU check of issues 8, 14 and 24, sized to a 15-minute device lease: every part
# runs inside BUDGET seconds, most important first, each as its own process under a timeout cut to
# what is left, so that one slow compilation costs its own rows only.
#   0. smoke test: a tiny synthetic `bench step` and `bench peers` (SlowFast-R18, torch eager);
#      the script stops here if either fails; the step again with cuDNN's attention (opt-in)
#   1. `bench step`, the AVA ViT-B preset in bfloat16 at batch BATCH (clips/s, MFU, peak memory;
#      at BATCH / 2 if BATCH fails)
#   2. `bench peers` at the presets' geometry, float32 (TF32 products on both sides, JAX's GPU
#      default), PEER_BATCH clips: SlowFast-R50 res5, then the ViT-B video encoder and BLIP, each
#      against torch eager
#   3. `bench forward`, the AVA preset at batch BATCH
#   4. the same peers against `torch.compile` (inductor compiles for minutes: last)
#   5. SlowFast-R101 (eager and compiled), `bench memory` (compile only, with and without remat)
#   6. `bench loop` on the AVA fixture and the synthetic set, only where TensorFlow is installed
# Then a summary of every JSON line. Logs go to LOGS/NAME.txt.
#
#   bash bench/gpu.sh                  # from anywhere; runs in the repository root
#
# Environment: PYTHON (default python3), SITE (a folder of pure-Python packages put first on
# PYTHONPATH, for a machine with no package index: ml_collections, pytorchvideo and its fvcore,
# iopath, yacs, termcolor, parameterized; made where pip works with `pip install --no-deps --target
# .gpu_site ml-collections pytorchvideo==0.1.5 fvcore iopath yacs termcolor parameterized`), WHEELS (default bench/wheels: wheels installed offline
# when a package is missing), BUDGET (default 480 s), BATCH (8), PEER_BATCH (4), MEM_BATCH (4),
# LOGS (default bench/out), SKIP (names of parts not to run, e.g. SKIP="step forward" on a rerun
# that has their numbers; the smoke test always runs). BATCH 16 needs 151 GiB in the step
# (bench/README.md, section 12).
set -uo pipefail
here() { [ -z "${1:-}" ] || case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
# folders named in the environment are the caller's; the defaults are the repository's
SITE=$(here "${SITE:-}") LOGS=$(here "${LOGS:-}") WHEELS=$(here "${WHEELS:-}")
SYNTH=$(here "${SYNTH:-}")
PY=${PYTHON:-python3}
case $PY in */*) PY=$(here "$PY") ;; esac
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/wheels}
BUDGET=${BUDGET:-480}
BATCH=${BATCH:-8}
PEER_BATCH=${PEER_BATCH:-4}
MEM_BATCH=${MEM_BATCH:-4}
LOGS=${LOGS:-bench/out}
SKIP=" ${SKIP:-} "
mkdir -p "$LOGS"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
if [ -n "$SITE" ]; then export PYTHONPATH="$SITE:${PYTHONPATH:-}"; fi
start=$SECONDS

ready() {
  "$PY" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing: {missing}")
import jax
if jax.default_backend() != "gpu":
    sys.exit(f"JAX backend is {jax.default_backend()}, not gpu")
EOF
}

# Dependencies: the machine's own (with SITE), else wheels carried along, else the CUDA extra.
if ! ready; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  else
    "$PY" -m pip install --quiet -e '.[cuda]'
  fi
  ready || exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF'
import importlib.util
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())
if importlib.util.find_spec("torch"):
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
EOF
echo "setup took $((SECONDS - start)) s"

part() {  # part NAME SECONDS ENV... -- ARGS...: launch.py ARGS under min(SECONDS, budget left)
  local name=$1 want=$2 left=$((BUDGET - (SECONDS - start))) envs=()
  shift 2
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  if [[ $SKIP == *" $name "* ]]; then
    echo "== $name: skipped (SKIP)"
    return 0
  fi
  if ((left < 30)); then
    echo "== $name: not run, ${left} s of the budget left"
    return 1
  fi
  local t=$((want < left ? want : left))
  echo "== $name (timeout ${t} s, at $((SECONDS - start)) s)"
  env "${envs[@]}" timeout "$t" "$PY" launch.py "$@" 2>&1 | tee "$LOGS/$name.txt"
  local rc=${PIPESTATUS[0]}
  ((rc == 0)) || echo "== $name failed: exit $rc"
  return "$rc"
}
AVA=(--config configs/ava_vitb16.py --config.model.dtype=bfloat16)
GPU_ONLY=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)
SHARED=(XLA_PYTHON_CLIENT_PREALLOCATE=false)  # torch allocates in the same process
peers() {  # peers NAME SECONDS PAIRS COMPILE
  part "$1" "$2" "${SHARED[@]}" -- bench peers --config configs/ava_vitb16.py \
    --config.bench.peers="$3" --config.bench.batch_size="$PEER_BATCH" \
    --config.bench.torch_compile="$4"
}

# 0. Smoke test, and cuDNN's attention (opt-in: the AVA parts use the default, XLA's).
SMOKE=(bench step --config configs/synthetic.py --config.batch_size=2)
part smoke_step 90 "${GPU_ONLY[@]}" -- "${SMOKE[@]}" || exit 3
part smoke_cudnn 90 "${GPU_ONLY[@]}" -- "${SMOKE[@]}" --config.model.attention_impl=cudnn
part smoke_peers 90 "${SHARED[@]}" -- bench peers --config configs/synthetic.py \
  --config.bench.peers="('slowfast18',)" --config.bench.slowfast_input="(8, 32, 32)" \
  --config.bench.rounds=1 --config.bench.torch_compile=False || exit 3
# 1-6.
if ! part step 150 "${GPU_ONLY[@]}" -- bench step "${AVA[@]}" --config.batch_size="$BATCH"; then
  part step_half 120 "${GPU_ONLY[@]}" -- bench step "${AVA[@]}" \
    --config.batch_size=$((BATCH / 2))
fi
peers peers_slowfast50 150 "('slowfast50',)" False
peers peers_vit_blip 120 "('videomae', 'blip')" False
part forward 100 "${GPU_ONLY[@]}" -- bench forward "${AVA[@]}" --config.batch_size="$BATCH"
peers peers_slowfast50_compiled 240 "('slowfast50',)" True
peers peers_vit_blip_compiled 180 "('videomae', 'blip')" True
peers peers_slowfast101 240 "('slowfast101',)" True
part memory_remat 90 "${GPU_ONLY[@]}" -- bench memory "${AVA[@]}" \
  --config.batch_size="$MEM_BATCH" --config.model.remat_policy=full
part memory_none 90 "${GPU_ONLY[@]}" -- bench memory "${AVA[@]}" \
  --config.batch_size="$BATCH" --config.model.remat_policy=none
if "$PY" -c 'import tensorflow' 2>/dev/null; then
  # (the fixture's 36 keyframes are 9 batches of 4: each epoch's new tf.data pipeline counts)
  part loop_ava 300 -- bench loop "${AVA[@]}" --config.bench.fixture=True --config.batch_size=4
  SYNTH=${SYNTH:-$PWD/runs/data/synthetic}
  [ -d "$SYNTH/jovale_synthetic" ] ||
    part build_synthetic 120 -- build-data --dataset synthetic --data_dir "$SYNTH" >/dev/null
  part loop_synthetic 300 -- bench loop --config configs/synthetic.py --data_dir "$SYNTH"
else
  echo "== bench loop: not run (no TensorFlow on this machine: tf.data feeds the loop)"
fi

# Summary. MFU: against this GPU's bfloat16 matmul measured in the same run (matmul_ratio), and
# against the H100 / H200 SXM's nominal dense bfloat16 peak (989.4 TFLOP/s).
"$PY" - "$LOGS" <<'EOF'
import json, pathlib, sys
logs = pathlib.Path(sys.argv[1])

def last_json(name):
    path = logs / f"{name}.txt"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None

print(f"{'bench':<12} {'batch':>5} {'clips/s':>9} {'GMACs/clip':>11} {'TFLOP/s':>8} "
      f"{'matmul TF/s':>12} {'MFU':>6} {'MFU(spec)':>9} {'peak GB':>8} {'compile s':>9}")
for name in ("step", "step_half", "forward"):
    if (r := last_json(name)) is None:
        continue
    peak = r.get("peak_bytes_in_use")
    print(f"{name:<12} {r['batch_size']:>5} {r['clips_per_s']:>9.2f} {r['gmacs_per_clip']:>11.1f} "
          f"{r['achieved_gflops_per_s'] / 1e3:>8.1f} {r['matmul_gflops_per_s'] / 1e3:>12.1f} "
          f"{r['matmul_ratio']:>6.1%} {r['achieved_gflops_per_s'] / 989.4e3:>9.1%} "
          f"{'n/a' if peak is None else f'{peak / 1e9:.1f}':>8} {r['compile_s']:>9.1f}")
for name in ("memory_remat", "memory_none"):
    if (r := last_json(name)) is not None:
        gb = {k: round(r[k] / 1e9, 2) for k in ("params", "opt_state", "temporaries", "total",
                                                "per_clip")}
        print(name, f"batch {r['batch_size']} remat {r['remat_policy']}: {gb} GB per device")
for name in ("peers_slowfast50", "peers_vit_blip", "peers_slowfast50_compiled",
             "peers_vit_blip_compiled", "peers_slowfast101", "loop_ava", "loop_synthetic"):
    if (r := last_json(name)) is not None:
        print(name, json.dumps(r.get("ratios", {"ratio": r.get("ratio")}), indent=1))
EOF
echo "total $((SECONDS - start)) s"
