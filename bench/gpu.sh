#!/usr/bin/env bash
# The prepared GPU check of issues 8, 14 and 24: `bench forward` and `bench step` of the AVA preset
# at batch 16 and `bench memory` at batch 4 (MEM_BATCH), in bfloat16 on one GPU, `bench peers`
# (torch with CUDA against jax[cuda]) and `bench loop` (AVA fixture and synthetic set), then a
# summary of clips/s, MFU, peak memory, the compiled memory per device with and without remat and
# the peers' and the loop's ratios. Budget: the first part under 12 minutes on one H100 (each bench
# is one process: set-up, compilation, 1 + 5 timed calls, the matmul; the timeouts, 150 + 210 + 120
# + 2 x 120 s, bound it when nothing needs installing); issue 24's part adds at most 25 minutes
# (timeouts 600 + 300 + 300 + 300 s).
#
#   bash bench/gpu.sh [OUT_DIR]        # from anywhere; runs in the repository root
#
# Environment: PYTHON (default python3), WHEELS (default bench/wheels: wheels to install offline
# when a package is missing or JAX sees no GPU), BATCH (default 16). If the step fails at BATCH
# (out of memory, say) it is run again at BATCH / 2: remat is no fallback, since with unrolled
# layers XLA's scheduling undoes its memory saving (bench/README.md, section 3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-bench/out}}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-bench/wheels}
BATCH=${BATCH:-16}
MEM_BATCH=${MEM_BATCH:-4}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export TF_CPP_MIN_LOG_LEVEL=2
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

# 1. Dependencies: the machine's own, else wheels carried along, else the CUDA extra (online).
if ! ready; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  else
    "$PY" -m pip install --quiet -e '.[cuda]'
  fi
  ready
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
  "optax", optax.__version__, jax.devices())'
echo "setup took $((SECONDS - start)) s"

# 2. The benches; each log's last line is its JSON.
bench() {  # bench SECONDS MODE BATCH LOG
  timeout "$1" "$PY" launch.py bench "$2" --config configs/ava_vitb16.py --config.batch_size="$3" \
    --config.model.dtype=bfloat16 2>&1 | tee "$OUT/$4"
  return "${PIPESTATUS[0]}"
}
bench 150 forward "$BATCH" forward.txt || echo "bench forward failed"
echo "forward done at $((SECONDS - start)) s"
if ! bench 210 step "$BATCH" step.txt; then
  echo "bench step failed at batch $BATCH (out of memory?): again at batch $((BATCH / 2))"
  bench 120 step $((BATCH / 2)) step_half.txt || echo "bench step failed at batch $((BATCH / 2))"
fi
echo "step done at $((SECONDS - start)) s"
# Compiled memory (issue 14): MEM_BATCH clips with remat, BATCH clips without.
memory() {  # memory BATCH POLICY LOG
  timeout 120 "$PY" launch.py bench memory --config configs/ava_vitb16.py --config.batch_size="$1" \
    --config.model.dtype=bfloat16 --config.model.remat_policy="$2" 2>&1 | tee "$OUT/$3"
}
memory "$MEM_BATCH" full memory_remat.txt || echo "bench memory (remat) failed"
memory "$BATCH" none memory_none.txt || echo "bench memory (no remat) failed"
echo "memory done at $((SECONDS - start)) s"

# 3. Issue 24: the peers (torch with CUDA when installed, else their rows say why) at the presets'
# geometry, float32 on both sides, and the train loop fed by the pipeline against a device-resident
# batch, on the AVA-layout fixture and on the synthetic set (built first).
timeout 600 "$PY" launch.py bench peers --config configs/ava_vitb16.py \
  --config.bench.peers="('slowfast50', 'slowfast101', 'videomae', 'blip', 'input')" \
  2>&1 | tee "$OUT/peers.txt" || echo "bench peers failed"
echo "peers done at $((SECONDS - start)) s"
# (the fixture's 36 keyframes are 9 batches of 4: each epoch's new tf.data pipeline is counted)
timeout 300 "$PY" launch.py bench loop --config configs/ava_vitb16.py --config.bench.fixture=True \
  --config.model.dtype=bfloat16 --config.batch_size=4 2>&1 | tee "$OUT/loop_ava.txt" \
  || echo "bench loop (AVA fixture) failed"
SYNTH=${SYNTH:-runs/data/synthetic}
if [ ! -d "$SYNTH/jovale_synthetic" ]; then
  timeout 300 "$PY" launch.py build-data --dataset synthetic --data_dir "$SYNTH" >/dev/null \
    || echo "build-data synthetic failed"
fi
timeout 300 "$PY" launch.py bench loop --config configs/synthetic.py --data_dir "$SYNTH" \
  2>&1 | tee "$OUT/loop_synthetic.txt" || echo "bench loop (synthetic) failed"
echo "loop done at $((SECONDS - start)) s"

# 4. Summary. MFU: against this GPU's bfloat16 matmul measured in the same run (matmul_ratio), and
# against the H100 SXM's nominal dense bfloat16 peak (989.4 TFLOP/s).
"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'bench':<12} {'batch':>5} {'clips/s':>9} {'GMACs/clip':>11} {'TFLOP/s':>8} "
      f"{'matmul TF/s':>12} {'MFU':>6} {'MFU(spec)':>9} {'peak GB':>8}")
for name in ("forward", "step", "step_half"):
    path = out / f"{name}.txt"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    if not lines or not lines[-1].startswith("{"):
        continue
    r = json.loads(lines[-1])
    peak = r.get("peak_bytes_in_use")
    print(f"{name:<12} {r['batch_size']:>5} {r['clips_per_s']:>9.2f} {r['gmacs_per_clip']:>11.1f} "
          f"{r['achieved_gflops_per_s'] / 1e3:>8.1f} {r['matmul_gflops_per_s'] / 1e3:>12.1f} "
          f"{r['matmul_ratio']:>6.1%} {r['achieved_gflops_per_s'] / 989.4e3:>9.1%} "
          f"{'n/a' if peak is None else f'{peak / 1e9:.1f}':>8}")
print(f"{'memory':<12} {'batch':>5} {'remat':>6} {'params':>7} {'opt':>7} {'temp':>8} "
      f"{'total':>8} {'per clip':>9} (GB per device) {'GMACs/clip':>11}")
for name in ("memory_remat", "memory_none"):
    path = out / f"{name}.txt"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    if not lines or not lines[-1].startswith("{"):
        continue
    r = json.loads(lines[-1])
    gb = {k: r[k] / 1e9 for k in ("params", "opt_state", "temporaries", "total", "per_clip")}
    print(f"{name:<12} {r['batch_size']:>5} {r['remat_policy']:>6} {gb['params']:>7.2f} "
          f"{gb['opt_state']:>7.2f} {gb['temporaries']:>8.2f} {gb['total']:>8.2f} "
          f"{gb['per_clip']:>9.2f}                {r['gmacs_per_clip']:>11.1f}")
for name in ("peers", "loop_ava", "loop_synthetic"):
    path = out / f"{name}.txt"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    if lines and lines[-1].startswith("{"):
        r = json.loads(lines[-1])
        print(name, json.dumps(r.get("ratios", {"ratio": r.get("ratio")}), indent=1))
EOF
echo "total $((SECONDS - start)) s"
