"""SlowFast checkpoints -> :class:`jovale_jax.models.SlowFast` (``model.video.backbone =
"slowfast"``).

Three layouts of the same network, one converter: every variable of the Flax module (conv kernels,
BatchNorm scale / bias / running statistics) is named in the source by a layout function, so a
checkpoint converts only when it holds exactly the module's tensors.

- ``pyslowfast``: PySlowFast's ``.pyth`` (the weights under ``model_state``), e.g. the model zoo's
  K400 ``SLOWFAST_8x8_R50.pyth``: ``s1.pathway{0,1}_stem.{conv,bn}``,
  ``s{1..4}_fuse.{conv_f2s,bn}``,
  ``s{2..5}.pathway{0,1}_res{j}.branch2.{a,b,c}{,_bn}`` and ``branch1{,_bn}``; ``head.*`` unused.
  Non-local blocks (``pathway0_nonlocal*``, some R101 AVA models) are not supported. The
  settings the file records (``cfg``: SLOWFAST.ALPHA, BETA_INV, FUSION_KERNEL_SZ, DATA.NUM_FRAMES)
  must equal the config's (:func:`check_recorded`).
- ``acar``: ACAR-Net's backbone checkpoints (``SLOWFAST_R50_K400.pth.tar``,
  ``SLOWFAST_R101_K700.pth.tar``): ``{slow,fast}_conv1 / _bn1``, ``Tconv{1..4}`` (conv only, or
  ``.0`` conv + ``.1`` BatchNorm), ``{slow,fast}_res{1..4}.{j}.conv{1,2,3} / bn{1,2,3}``,
  ``downsample.0`` + ``downsample_bn``. ACAR-Net's R50 uses fusion kernel 7 with BatchNorm + ReLU,
  its R101 kernel 5 without (``model.video.slowfast.fusion_kernel / fusion_bn_relu``). Its own
  training checkpoints (weights under ``state_dict``, keys ``module.backbone.module.*``, the
  ``module.head.*`` unused) convert too.
- ``pytorchvideo``: ``pytorchvideo.models.hub.slowfast_r50`` / ``slowfast_r101`` state dicts:
  ``blocks.0.multipathway_blocks.{p}.{conv,norm}``, ``blocks.{i}.multipathway_fusion.
  {conv_fast_to_slow,norm}``, ``blocks.{i}.multipathway_blocks.{p}.res_blocks.{j}.branch2.
  {conv,norm}_{a,b,c}`` and ``branch1_{conv,norm}``; the head ``blocks.6.*`` unused.

``num_batches_tracked`` counters are unused everywhere. PyTorch Conv3d weights (out, in, t, h, w)
become kernels (t, h, w, in, out); BatchNorm ``weight, bias, running_mean, running_var`` become
``scale, bias, mean, var``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from jovale_jax.convert.common import (
    ConversionError,
    Converted,
    KeySpec,
    Rule,
    component_shapes,
    convert_state_dict,
    strip_prefixes,
)
from jovale_jax.models.slowfast import STAGE_DEPTHS, SlowFast, is_slowfast, stage_depths

BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
PARTS = ("conv_a", "conv_b", "conv_c", "shortcut")

# A unit is the module path of one ConvBN; a layout returns its (conv, BatchNorm) key prefixes.
Layout = Callable[[tuple, Mapping], tuple[str, str]]


def _pyslowfast(unit: tuple, cfg) -> tuple[str, str]:
    if unit[0] == "stem":
        return f"s1.pathway{unit[1]}_stem.conv", f"s1.pathway{unit[1]}_stem.bn"
    if unit[0] == "fusion":
        return f"s{unit[1] + 1}_fuse.conv_f2s", f"s{unit[1] + 1}_fuse.bn"
    _, p, i, j, part = unit
    base = f"s{i + 2}.pathway{p}_res{j}"
    if part == "shortcut":
        return f"{base}.branch1", f"{base}.branch1_bn"
    letter = part[-1]
    return f"{base}.branch2.{letter}", f"{base}.branch2.{letter}_bn"


def _acar(unit: tuple, cfg) -> tuple[str, str]:
    path = ("slow", "fast")
    if unit[0] == "stem":
        return f"{path[unit[1]]}_conv1", f"{path[unit[1]]}_bn1"
    if unit[0] == "fusion":
        name = f"Tconv{unit[1] + 1}"
        return (f"{name}.0", f"{name}.1") if cfg.slowfast.fusion_bn_relu else (name, "")
    _, p, i, j, part = unit
    base = f"{path[p]}_res{i + 1}.{j}"
    if part == "shortcut":
        return f"{base}.downsample.0", f"{base}.downsample_bn"
    n = "abc".index(part[-1]) + 1
    return f"{base}.conv{n}", f"{base}.bn{n}"


def _pytorchvideo(unit: tuple, cfg) -> tuple[str, str]:
    if unit[0] == "stem":
        base = f"blocks.0.multipathway_blocks.{unit[1]}"
        return f"{base}.conv", f"{base}.norm"
    if unit[0] == "fusion":
        base = f"blocks.{unit[1]}.multipathway_fusion"
        return f"{base}.conv_fast_to_slow", f"{base}.norm"
    _, p, i, j, part = unit
    base = f"blocks.{i + 1}.multipathway_blocks.{p}.res_blocks.{j}"
    if part == "shortcut":
        return f"{base}.branch1_conv", f"{base}.branch1_norm"
    return f"{base}.branch2.conv_{part[-1]}", f"{base}.branch2.norm_{part[-1]}"


LAYOUTS: dict[str, tuple[Layout, tuple[str, ...], tuple[str, ...]]] = {
    # kind: (layout, prefixes stripped, unused key patterns)
    "pyslowfast": (_pyslowfast, ("module.",), (r"head\.", r".*num_batches_tracked$")),
    "acar": (
        _acar,
        ("module.", "backbone.module.", "backbone."),
        (r"neck\.", r"head\.", r".*num_batches_tracked$"),  # neck, head: a training checkpoint's
    ),
    "pytorchvideo": (_pytorchvideo, ("module.",), (r"blocks\.6\.", r".*num_batches_tracked$")),
}


def _unit_of(module_path: tuple[str, ...]) -> tuple:
    """A Flax module path (``slow_stages/2/0/conv_a``, ``fusions/1/conv``) -> a layout unit."""
    if module_path[0] in ("slow_stem", "fast_stem"):
        return ("stem", int(module_path[0] == "fast_stem"))
    if module_path[0] == "fusions":
        return ("fusion", int(module_path[1]))
    return (
        "block",
        int(module_path[0] == "fast_stages"),
        int(module_path[1]),
        int(module_path[2]),
        module_path[3],
    )


def _rule(key: str, shape: tuple[int, ...], dst: str, is_kernel: bool) -> Rule:
    if is_kernel:  # (t, h, w, in, out) <- (out, in, t, h, w)
        torch_shape = (shape[4], shape[3], *shape[:3])
        return Rule(key, torch_shape, lambda w: {dst: w.transpose(2, 3, 4, 1, 0)})
    return Rule(key, shape, lambda v: {dst: v})


def _check_depth(state_dict: Mapping[str, np.ndarray], kind: str, cfg) -> None:
    """A checkpoint of the other depth: name the config field and both values."""
    layout = LAYOUTS[kind][0]
    keys = {strip_prefixes(k, LAYOUTS[kind][1]) for k in state_dict}
    res4 = 0
    while f"{layout(('block', 0, 2, res4, 'conv_a'), cfg)[0]}.weight" in keys:
        res4 += 1
    want = stage_depths(cfg)[2]
    if res4 and res4 != want:
        given = {v[2]: d for d, v in STAGE_DEPTHS.items()}.get(res4, f"with {res4} res4 blocks")
        raise ConversionError(
            f"{kind}: config field model.video.slowfast.depth is {cfg.slowfast.depth} ({want} res4 "
            f"blocks) but the checkpoint is a SlowFast-R{given} ({res4} res4 blocks)"
        )


# What a PySlowFast ``.pyth`` records in its ``cfg`` (section, name) -> the ``model.video`` field.
RECORDED_FIELDS = {
    ("SLOWFAST", "ALPHA"): ("slowfast", "alpha"),
    ("SLOWFAST", "BETA_INV"): ("slowfast", "beta_inv"),
    ("SLOWFAST", "FUSION_KERNEL_SZ"): ("slowfast", "fusion_kernel"),
    ("DATA", "NUM_FRAMES"): ("num_frames",),
}


def check_recorded(recorded: Mapping | None, cfg, kind: str) -> None:
    """Refuse a checkpoint whose recorded settings (``recorded``: a ``.pyth``'s parsed ``cfg``)
    differ from ``cfg`` (``config.model.video``), naming both values of each difference."""
    diffs = []
    for (section, name), field in RECORDED_FIELDS.items():
        value = (recorded or {}).get(section, {}).get(name)
        ours = cfg
        for part in field:
            ours = ours[part]
        if value is not None and value != ours:
            diffs.append(
                f"its cfg {section}.{name} is {value}, config field "
                f"model.video.{'.'.join(field)} is {ours}"
            )
    if diffs:
        raise ConversionError(f"{kind}: the checkpoint was trained otherwise: {'; '.join(diffs)}")


def convert_slowfast(
    state_dict: Mapping[str, np.ndarray], cfg, kind: str, recorded: Mapping | None = None
) -> Converted:
    """A SlowFast state dict of layout ``kind`` (``pyslowfast``, ``acar``, ``pytorchvideo``) ->
    ``SlowFast(cfg)`` parameters and BatchNorm statistics; ``cfg`` is ``config.model.video``;
    ``recorded`` the settings the checkpoint file records (:func:`check_recorded`)."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown SlowFast layout {kind!r}; expected one of {sorted(LAYOUTS)}")
    if not is_slowfast(cfg):
        raise ConversionError(
            f"{kind}: config field model.video.backbone is "
            f"{cfg.get('backbone', 'vit')!r}, expected 'slowfast'"
        )
    check_recorded(recorded, cfg, kind)
    _check_depth(state_dict, kind, cfg)
    layout, strip, unused = LAYOUTS[kind]
    rules = []
    for path, shape in component_shapes(SlowFast, cfg).items():
        parts = tuple(path.split("/"))
        if parts[-2] == "bn":
            prefix = layout(_unit_of(parts[:-2]), cfg)[1]
            rules.append(_rule(f"{prefix}.{BN_LEAVES[parts[-1]]}", shape, path, False))
        else:
            prefix = layout(_unit_of(parts[:-1]), cfg)[0]
            rules.append(_rule(f"{prefix}.weight", shape, path, True))
    spec = KeySpec(
        kind,
        "video_encoder",
        rules,
        strip=strip,
        unused=unused,
        notes={"layout": kind, "depth": cfg.slowfast.depth},
    )
    return convert_state_dict(state_dict, spec, component_shapes(SlowFast, cfg))
