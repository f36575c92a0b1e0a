"""``launch.py bench peers``: our models, input and evaluator against what a user would pick
instead, timed side by side in one process on the same inputs (``config.bench``).

Pairs (``config.bench.peers``):

* ``slowfast50`` / ``slowfast101``: our SlowFast-R50 / R101, detection res5 (stride 1, dilation
  2; the presets' fusion: R50 kernel 7 with BatchNorm + ReLU, R101 kernel 5, convolution only),
  against pytorchvideo's ``create_slowfast`` built alike (stem to res5, no head), in torch eager
  and under ``torch.compile``; forward, and forward + backward of the sum of both pathways'
  maps with BatchNorm statistics frozen on both sides (torch ``eval()``; ours always).
  ``slowfast18`` is the one-block-per-stage network (pytorchvideo's depth 18), for tests.
* ``videomae``: our ViT-B ``VideoEncoder`` against transformers' ``VideoMAEModel`` (SDPA
  attention), forward and forward + backward; square clips (VideoMAE needs H = W).
* ``blip``: our ``BlipVisionEncoder`` against transformers' ``BlipVisionModel``, forward.
* ``input``: a PySlowFast-style AVA loader (:mod:`.pyslowfast_ava`, pre-extracted JPEGs) against
  our TFRecord pipeline (video only, the same frames, stride and short side), per clip, on the
  AVA-layout fixture of ``bench input``; extracting the frames and building the TFRecords are
  timed apart. Rates are per second of wall time and per CPU second of this process.
* ``evaluator``: the official ActivityNet AVA evaluator (``Evaluation/get_ava_performance.py`` of
  a checkout named by ``config.bench.activitynet_dir``, with numpy's removed ``np.float`` /
  ``np.int`` aliases restored for it) against ``jovale_jax.evaluation.ava``, end to end from the
  same CSV files (AVA-val-like, ``config.bench.eval_frames`` keyframes), with both mAPs.

Random weights on both sides (time does not depend on the values), float32, ``bench.batch_size``
clips. Each contender is compiled (JAX: ahead of time; ``torch.compile``: its first call) and the
compile time reported apart, called once more untimed, then all contenders of a pair alternate
``bench.rounds`` timed calls and the median is kept. ``ratio`` = peer seconds / our seconds: above
1 we are ahead. A peer that cannot be imported gets a row that says why. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

Prepared = tuple[Callable[[], Any], float]  # (a call that blocks until done, compile seconds)


# ---------------------------------------------------------------------------------------------
# Timing


def _race(contenders: dict[str, Callable[[], Prepared]], rounds: int) -> dict[str, dict]:
    """Prepare (compile) every contender, call each once untimed, then alternate ``rounds``
    timed calls; {name: {"seconds": median, "compile_s"}}, or {name: {"missing": why}} for a peer
    that cannot be imported, or {name: {"failed": why}} for a peer that fails to compile or run
    (ours must not fail)."""
    ready, out = {}, {}
    for name, prepare in contenders.items():
        try:
            call, compile_s = prepare()
            call()
        except ImportError as e:
            out[name] = {"missing": f"{type(e).__name__}: {e}"}
            continue
        except Exception as e:  # a peer's own failure is a result to report, not ours
            if name == "ours":
                raise
            out[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        ready[name], out[name] = call, {"compile_s": round(compile_s, 3), "times": []}
    for _ in range(rounds):
        for name, call in ready.items():
            start = time.perf_counter()
            call()
            out[name]["times"].append(time.perf_counter() - start)
    for name in ready:
        out[name]["seconds"] = statistics.median(out[name].pop("times"))
    return out


def _jax_prepared(fn: Callable, *args) -> Prepared:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), compile_s


def _torch_prepared(call: Callable, compiled: bool) -> Prepared:
    """A torch call; when it runs a ``torch.compile``d model, its first call is the compile."""
    start = time.perf_counter()
    call()
    return call, time.perf_counter() - start if compiled else 0.0


def _torch_contenders(make: Callable[[bool], Callable], compile_too: bool) -> dict:
    """torch eager (and compiled) contenders from ``make(compiled) -> a no-argument call``."""
    out = {"torch eager": lambda: _torch_prepared(make(False), False)}
    if compile_too:
        out["torch.compile"] = lambda: _torch_prepared(make(True), True)
    return out


def _loss_and_grad(apply: Callable) -> Callable:
    """params, rest, x -> gradients of the sum of ``apply``'s outputs w.r.t. params."""

    def loss(params, rest, x):
        return sum(jnp.sum(o) for o in jax.tree.leaves(apply(params, rest, x)))

    return jax.grad(loss)


def _ours(module: nnx.Module, method: Callable, x: np.ndarray, backward: bool) -> Prepared:
    """Our ``method(module, x)`` (forward, or the gradients of its outputs' sum)."""
    module.eval()
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def apply(params, rest, x):
        return method(nnx.merge(graphdef, params, rest), x)

    return _jax_prepared(_loss_and_grad(apply) if backward else apply, params, rest, jnp.asarray(x))


def torch_device():
    """CUDA when torch sees a GPU (bench/gpu.sh), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def match_float32_math() -> str:
    """Make torch do the float32 arithmetic JAX does on this backend, and say which: on a GPU,
    JAX's float32 products and convolutions use TF32 unless ``jax_default_matmul_precision``
    asks for more (``jax.lax.Precision.DEFAULT``), while torch's matrix products use full float32
    by default, so torch is switched to TF32 too; on a CPU both compute in float32."""
    precision = jax.config.jax_default_matmul_precision
    if jax.default_backend() != "gpu" or precision in ("highest", "float32"):
        return "float32"
    try:
        import torch
    except ImportError:
        return "tf32"
    torch.set_float32_matmul_precision("high")  # TF32 products; convolutions: cuDNN's default
    torch.backends.cudnn.allow_tf32 = True
    return "tf32"


def _torch_step(model, inputs: Callable[[], Any], backward: bool) -> Callable[[bool], Callable]:
    """make(compiled) for a torch ``model`` (moved to :func:`torch_device`, as ``inputs()`` must
    be): no-grad forward, or forward and backward of the outputs' sum (gradients cleared each
    call); each call waits for the GPU."""
    import torch

    model.to(torch_device())
    wait = torch.cuda.synchronize if torch_device().type == "cuda" else lambda: None

    def make(compiled: bool) -> Callable:
        # static shapes: the inputs never change (a dynamic-shape recompile of pytorchvideo's
        # SlowFast failed in inductor's convolution lowering, torch 2.13.0)
        run = torch.compile(model, dynamic=False) if compiled else model

        def forward():
            with torch.no_grad():
                run(*inputs())
            wait()

        def step():
            model.zero_grad(set_to_none=True)
            out = run(*inputs())
            sum(o.sum() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()
            wait()

        return step if backward else forward

    return make


# ---------------------------------------------------------------------------------------------
# Peers


@contextlib.contextmanager
def torchvision_ops_stand_in():
    """pytorchvideo's head imports ``torchvision.ops.RoIAlign``; no torchvision wheel loads next
    to this CPU torch, and the backbone never uses it, so a stand-in module takes its place while
    pytorchvideo is imported (and is removed after: transformers looks for torchvision too)."""
    if "torchvision" in sys.modules:
        yield
        return
    ops = types.ModuleType("torchvision.ops")
    ops.RoIAlign = None
    tv = types.ModuleType("torchvision")
    tv.ops = ops
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        yield
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]


def slowfast_config(config: ml_collections.ConfigDict, depth: int) -> ml_collections.ConfigDict:
    """``model.video`` of the SlowFast-R``depth`` preset (depth 18: one block per stage, the
    R50's fusion) at ``config.bench.slowfast_input`` when set (T_v at most its Slow frames)."""
    from jovale_jax.configs import common

    video = common.use_slowfast(common.base_config(), 101 if depth == 101 else 50).model.video
    if depth == 18:
        video.slowfast.stage_blocks = (1, 1, 1, 1)
    if config.bench.slowfast_input:
        frames, h, w = config.bench.slowfast_input
        video.num_frames, video.image_size = frames, (h, w)
        slow = frames // video.slowfast.alpha
        video.slowfast.time_steps = min(video.slowfast.time_steps, slow)
    return video


def pytorchvideo_slowfast(video: ml_collections.ConfigDict, depth: int):
    """pytorchvideo's ``create_slowfast`` built as ``video`` (stem to res5, detection res5), in
    ``eval()`` mode (BatchNorm statistics frozen)."""
    import torch

    with torchvision_ops_stand_in():
        from pytorchvideo.models import slowfast as pv

    sf = video.slowfast
    dil = ((1, 1, 1),) * 3 + ((1, sf.res5_dilation, sf.res5_dilation),)
    fusion_kernel, stride = (sf.fusion_kernel, 1, 1), (sf.alpha, 1, 1)
    fusion = pv.FastToSlowFusionBuilder(
        slowfast_channel_reduction_ratio=sf.beta_inv,
        conv_fusion_channel_ratio=sf.fusion_channel_ratio,
        conv_kernel_size=fusion_kernel,
        conv_stride=stride,
        norm=torch.nn.BatchNorm3d if sf.fusion_bn_relu else None,
        activation=torch.nn.ReLU if sf.fusion_bn_relu else None,
        max_stage_idx=3,
    ).create_module
    model = pv.create_slowfast(
        model_depth=depth,
        slowfast_channel_reduction_ratio=(sf.beta_inv,),
        stage_spatial_strides=((1, 2, 2, sf.res5_stride),) * 2,
        stage_conv_b_dilations=(dil, dil),
        slowfast_fusion_conv_stride=stride,
        slowfast_fusion_conv_kernel_size=fusion_kernel,
        fusion_builder=fusion,
    )
    return torch.nn.Sequential(*model.blocks[:5]).eval()


def _slowfast_pair(config, depth: int) -> list[dict]:
    from jovale_jax.models.slowfast import SlowFast, slow_indices

    video = slowfast_config(config, depth)
    b = config.bench
    x = np.random.default_rng(0).standard_normal(
        (b.batch_size, video.num_frames, *video.image_size, 3), np.float32
    )
    ours = SlowFast(video, rngs=nnx.Rngs(0))
    idx = slow_indices(video.num_frames, video.slowfast.alpha, video.slowfast.slow_sampling)
    rows = []
    for backward in (False, True):

        def peers(backward=backward):
            import torch

            model = pytorchvideo_slowfast(video, depth)
            xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous().to(torch_device())
            slow_idx = torch.from_numpy(idx).to(torch_device())

            def inputs():
                return ([xt.index_select(2, slow_idx), xt],)

            return _torch_step(model, inputs, backward)

        rows.append(
            _pair_row(
                f"SlowFast-R{depth} res5",
                "forward+backward" if backward else "forward",
                lambda backward=backward: _ours(ours, SlowFast.pathways, x, backward),
                peers,
                "pytorchvideo",
                config,
            )
        )
    rows[0]["geometry"] = rows[1]["geometry"] = [b.batch_size, video.num_frames, *video.image_size]
    return rows


def _pair_row(
    pair: str,
    mode: str,
    ours: Callable[[], Prepared],
    make_peer: Callable[[], Callable[[bool], Callable]],
    peer_name: str,
    config,
) -> dict:
    """One pair: ours against the torch peer in eager mode (and compiled)."""
    contenders: dict[str, Callable[[], Prepared]] = {"ours": ours}
    try:
        make = make_peer()
    except ImportError as e:
        contenders[peer_name] = functools.partial(_raise, e)
    else:
        contenders.update(
            {
                f"{peer_name} ({k})": v
                for k, v in _torch_contenders(make, config.bench.torch_compile).items()
            }
        )
    return _row(pair, mode, _race(contenders, config.bench.rounds))


def _raise(e: Exception):
    raise e


def _row(pair: str, mode: str, results: dict[str, dict]) -> dict:
    ours = results.pop("ours")
    for r in results.values():
        if "seconds" in r:
            r["ratio"] = round(r["seconds"] / ours["seconds"], 3)
    return {"pair": pair, "mode": mode, "ours": ours, "peers": results}


def _vit_config(config) -> ml_collections.ConfigDict:
    """The ViT-B video encoder at ``bench.vit_input`` (default 16 x 224 x 224), ``vit_depth``."""
    from jovale_jax.configs import common

    video = common.base_config().model.video
    frames, h, w = config.bench.vit_input or (16, 224, 224)
    video.num_frames, video.image_size = frames, (h, w)
    if config.bench.vit_depth:
        video.depth = config.bench.vit_depth
    return video


def _videomae_pair(config) -> list[dict]:
    from jovale_jax.models.vit import VideoEncoder

    video = _vit_config(config)
    frames, (h, w) = video.num_frames, video.image_size
    if h != w:
        raise ValueError(f"config.bench.vit_input: VideoMAE needs square frames, got {h} x {w}")
    x = np.random.default_rng(0).standard_normal(
        (config.bench.batch_size, frames, h, w, 3), np.float32
    )
    ours = VideoEncoder(video, rngs=nnx.Rngs(0))

    def peer():
        import torch
        from transformers import VideoMAEConfig, VideoMAEModel

        hf = VideoMAEConfig(
            image_size=h,
            num_frames=frames,
            tubelet_size=video.tubelet,
            patch_size=video.patch,
            hidden_size=video.width,
            num_hidden_layers=video.depth,
            num_attention_heads=video.num_heads,
            intermediate_size=video.mlp_dim,
            use_mean_pooling=False,
            attn_implementation="sdpa",
        )
        model = VideoMAEModel(hf).eval()
        xt = torch.from_numpy(x).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, H, W)
        xt = xt.to(torch_device())
        return model, xt

    return [
        _pair_row(
            "ViT-B video encoder",
            mode,
            lambda backward=backward: _ours(ours, VideoEncoder.__call__, x, backward),
            lambda backward=backward: _hf_step(peer, backward),
            "VideoMAEModel sdpa",
            config,
        )
        for mode, backward in (("forward", False), ("forward+backward", True))
    ]


def _hf_step(build: Callable, backward: bool) -> Callable[[bool], Callable]:
    """make(compiled) for the transformers model that ``build()`` gives with its input: the
    model's last hidden state is the output."""
    import torch

    model, x = build()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).last_hidden_state

    return _torch_step(LastHiddenState().eval(), lambda: (x,), backward)


def _blip_pair(config) -> list[dict]:
    from jovale_jax.configs import common
    from jovale_jax.models.blip import BlipVisionEncoder

    scene = common.base_config().model.scene
    scene.image_size = size = config.bench.blip_size
    if config.bench.vit_depth:
        scene.depth = config.bench.vit_depth
    x = np.random.default_rng(0).standard_normal(
        (config.bench.batch_size, 1, size, size, 3), np.float32
    )
    ours = BlipVisionEncoder(scene, rngs=nnx.Rngs(0))

    def peer():
        import torch
        from transformers import BlipVisionConfig, BlipVisionModel

        hf = BlipVisionConfig(
            image_size=size,
            patch_size=scene.patch,
            hidden_size=scene.width,
            num_hidden_layers=scene.depth,
            num_attention_heads=scene.num_heads,
            intermediate_size=scene.mlp_dim,
            layer_norm_eps=scene.layer_norm_eps,
        )
        xt = torch.from_numpy(x[:, 0]).permute(0, 3, 1, 2).contiguous().to(torch_device())
        return BlipVisionModel(hf).eval(), xt

    return [
        _pair_row(
            f"BLIP vision at {size}",
            "forward",
            lambda: _ours(ours, BlipVisionEncoder.__call__, x, False),
            lambda: _hf_step(peer, False),
            "BlipVisionModel",
            config,
        )
    ]


# ---------------------------------------------------------------------------------------------
# Input and evaluator


def _rate(items, count: int) -> dict[str, float]:
    """Clips per second of wall time and of this process's CPU time over ``count`` items after
    the first (which carries the start-up)."""
    next(items)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        next(items)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"clips_per_s": round(count / wall, 2), "clips_per_cpu_s": round(count / cpu, 2)}


def _input_pair(config) -> list[dict]:
    """Ours (TFRecords, video only) against the PySlowFast-style loader, per clip."""
    from jovale_jax import input_pipeline
    from jovale_jax.bench import pyslowfast_ava
    from jovale_jax.bench.input import FIXTURE_DIR, fixture_builder

    if config.dataset != "ava":
        raise ValueError(f"bench peers input: needs an AVA config, got dataset {config.dataset!r}")
    c = config.copy_and_resolve_references()
    c.model.modalities = ("video",)
    data_dir = config.bench.input_dir or FIXTURE_DIR
    start = time.perf_counter()
    builder = fixture_builder(c, data_dir)
    build_s = time.perf_counter() - start
    frames_dir = os.path.join(data_dir, "frames")
    start = time.perf_counter()
    if not os.path.isdir(frames_dir):
        tmp = frames_dir + ".tmp"
        pyslowfast_ava.extract_frames(os.path.join(data_dir, "raw", "videos"), tmp)
        os.replace(tmp, frames_dir)
    extract_s = time.perf_counter() - start
    video = c.model.video
    loader = pyslowfast_ava.AvaFrameLoader(
        frames_dir,
        pyslowfast_ava.read_keyframes(os.path.join(data_dir, "raw", "ava_train_v2.2.csv")),
        num_frames=video.num_frames,
        sample_rate=c.data.frame_stride,
        short_side=c.data.short_side,
        alpha=video.slowfast.alpha if video.backbone == "slowfast" else 1,
        mean=tuple(video.get("pixel_mean", input_pipeline.VIDEOMAE_MEAN)),
        std=tuple(video.get("pixel_std", input_pipeline.VIDEOMAE_STD)),
    )
    n = config.bench.input_clips
    c.batch_size = 1
    ours = input_pipeline.create_train_iterator(
        c, seed=c.seed, process_index=0, process_count=1, builder=builder
    )
    mine, theirs = _rate(ours, n), _rate(iter(loader), n)
    peer = {**theirs, "backend": loader.backend, "extract_s": round(extract_s, 2)}
    for key in ("clips_per_s", "clips_per_cpu_s"):
        peer[f"ratio_{key}"] = round(mine[key] / theirs[key], 3)
    return [
        {
            "pair": "input, per clip",
            "mode": f"{video.num_frames} frames x {c.data.frame_stride}, short side "
            f"{c.data.short_side}",
            "ours": {**mine, "build_s": round(build_s, 2)},
            "peers": {"PySlowFast-style AVA loader": peer},
        }
    ]


@contextlib.contextmanager
def _official_evaluator(directory: str):
    """``get_ava_performance`` of an ActivityNet checkout's ``Evaluation`` folder, importable
    (its ``ava`` package uses top-level imports of its own modules) with ``np.float`` / ``np.int``
    restored while it runs."""
    if not directory or not os.path.isfile(os.path.join(directory, "get_ava_performance.py")):
        raise ImportError(
            "config.bench.activitynet_dir: no get_ava_performance.py in "
            f"{directory!r} (a checkout of activitynet/ActivityNet's Evaluation folder)"
        )
    saved_path, added = list(sys.path), [a for a in ("float", "int") if not hasattr(np, a)]
    sys.path[:0] = [directory, os.path.join(directory, "ava")]
    for alias in added:
        setattr(np, alias, {"float": float, "int": int}[alias])
    try:
        yield importlib.import_module("get_ava_performance")
    finally:
        sys.path[:] = saved_path
        for alias in added:
            delattr(np, alias)


def _evaluator_pair(config) -> list[dict]:
    from jovale_jax.bench import eval as eval_bench
    from jovale_jax.evaluation import ava

    gt, det = eval_bench.make_ava_like(config.bench.eval_frames)
    stack = contextlib.ExitStack()
    files = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_peers_eval_"))
    paths = {k: os.path.join(files, f"{k}.csv") for k in ("groundtruth", "detections")}
    paths["labelmap"] = os.path.join(files, "labelmap.pbtxt")
    eval_bench.write_labelmap(paths["labelmap"])
    eval_bench.write_csv(paths["groundtruth"], gt)
    eval_bench.write_csv(paths["detections"], eval_bench.dense_to_rows(det, 15, 20))
    maps = {}

    def ours() -> Prepared:
        def call():
            maps["ours"] = ava.evaluate(
                paths["groundtruth"], paths["detections"], paths["labelmap"]
            )["mAP"]

        return call, 0.0

    def official() -> Prepared:
        module = stack.enter_context(_official_evaluator(config.bench.activitynet_dir))
        captured = []
        module.pprint = types.SimpleNamespace(
            pprint=lambda metrics, **_: captured.append(metrics), pformat=lambda obj, **_: repr(obj)
        )

        def call():
            with contextlib.ExitStack() as files:
                opened = {k: files.enter_context(open(p)) for k, p in paths.items()}
                module.run_evaluation(
                    opened["labelmap"], opened["groundtruth"], opened["detections"]
                )
            maps["official"] = float(captured[-1]["PascalBoxes_Precision/mAP@0.5IOU"])

        return call, 0.0

    with stack:
        results = _race({"ours": ours, "ActivityNet official": official}, config.bench.rounds)
    row = _row("AVA evaluator", f"{config.bench.eval_frames} keyframes, CSV to mAP", results)
    row["mAP"] = {k: round(v, 6) for k, v in maps.items()}
    return [row]


# ---------------------------------------------------------------------------------------------
# The bench

PAIRS = {
    "slowfast18": functools.partial(_slowfast_pair, depth=18),
    "slowfast50": functools.partial(_slowfast_pair, depth=50),
    "slowfast101": functools.partial(_slowfast_pair, depth=101),
    "videomae": _videomae_pair,
    "blip": _blip_pair,
    "input": _input_pair,
    "evaluator": _evaluator_pair,
}


def run_peers_bench(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs ``config.bench.peers``; returns (and prints) the rows and their ratios."""
    unknown = [p for p in config.bench.peers if p not in PAIRS]
    if unknown:
        raise ValueError(f"config.bench.peers: unknown {unknown}; expected some of {tuple(PAIRS)}")
    load_before = os.getloadavg()
    float32_math = match_float32_math()
    print(f"float32 arithmetic on both sides: {float32_math}")
    print(f"{'pair':<24}{'mode':<34}{'who':<34}{'s / call':>10}{'compile s':>10}{'ratio':>8}")
    rows = []
    for name in config.bench.peers:
        for row in PAIRS[name](config):
            _print_row(row)
            rows.append(row)
    result = {
        "bench": "peers",
        "batch_size": config.bench.batch_size,
        "rounds": config.bench.rounds,
        "platform": jax.default_backend(),
        "float32_math": float32_math,
        "rows": rows,
        "ratios": {
            f"{r['pair']} | {r['mode']} | {peer}": p.get("ratio", p.get("ratio_clips_per_cpu_s"))
            for r in rows
            for peer, p in r["peers"].items()
        },
        "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(
        "ratio: peer seconds / ours (input: our clips per CPU second / theirs); above 1 we are "
        f"ahead. load {result['load_avg_1min']}"
    )
    busy = max(result["load_avg_1min"]) > os.cpu_count()
    if busy:
        print(
            f"warning: load average {result['load_avg_1min']} above the {os.cpu_count()} cores: "
            "torch's OpenMP threads slow down many times more than XLA's under contention, so "
            "these ratios favour ours; re-run on a quiet machine (bench/README.md, section 10)"
        )
    result["loaded"] = busy
    print(json.dumps(result))
    return result


def _print_row(r: dict[str, Any]) -> None:
    """One pair's lines of the table (ours, then each peer), printed as the pair finishes."""
    for who, v in [("ours", r["ours"]), *r["peers"].items()]:
        if "missing" in v or "failed" in v:
            why = f"not available: {v['missing']}" if "missing" in v else f"failed: {v['failed']}"
            print(f"{r['pair']:<24}{r['mode']:<34}{who:<34} {why}")
            continue
        if "clips_per_s" in v:
            seconds = 1 / v["clips_per_s"]
            extra = f" ({v['clips_per_cpu_s']} clips per CPU s)"
        else:
            seconds, extra = v["seconds"], ""
        ratio = v.get("ratio", v.get("ratio_clips_per_cpu_s", ""))
        print(
            f"{r['pair']:<24}{r['mode']:<34}{who:<34}{seconds:>10.4f}"
            f"{v.get('compile_s', v.get('build_s', v.get('extract_s', 0.0))):>10.2f}"
            f"{ratio!s:>8}{extra}",
            flush=True,
        )
