"""What every converter shares: key bookkeeping, PyTorch-to-Flax layouts and table resizing.

A converter describes a checkpoint as a list of :class:`Rule` (one source key, its expected shape,
and the Flax parameters made from it), the keys it deliberately leaves unused (classifier heads,
text decoders, ...) and the parameters it derives without a key (a fixed position table).
:func:`convert_state_dict` checks the whole checkpoint against that description before converting
anything: a missing, extra or wrong-shape key is reported together with every other problem in one
:class:`ConversionError` that names the key and the shapes. The result is then checked against the
Flax module's own variables, so a converted tree always fills the module exactly.

Flax paths are ``/``-joined attribute names as in ``nnx.state(module)``. Rules name one layer's
parameters with its index (``encoder/layers/0/attn/query_kernel``); :func:`stack_layers` then
stacks them in index order into the scanned modules' layout (``encoder/layers/attn/query_kernel``,
shape (depth, ...)).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from jovale_jax.models.slowfast import FrozenParam
from jovale_jax.models.vit import PositionTable

Shape = tuple[int, ...]


class ConversionError(ValueError):
    """A checkpoint does not fit the configured module; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One checkpoint tensor: its key, its expected shape and the Flax parameters made from it."""

    key: str
    shape: Shape
    make: Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """How one source checkpoint maps onto one module.

    ``strip`` prefixes are removed where present (``vision_model.``), ``renames`` are regex
    substitutions applied after that (older on-disk names), ``unused`` are regexes matched at the
    start of the resulting keys that are deliberately not converted, and ``derived`` are
    parameters that no key provides.
    """

    source: str
    component: str
    rules: Sequence[Rule]
    unused: Sequence[str] = ()
    strip: Sequence[str] = ()
    renames: Sequence[tuple[str, str]] = ()
    derived: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Converted:
    """The parameters of one JoVALE component converted from one source checkpoint.

    ``component`` is the attribute of :class:`jovale_jax.models.JoVALE` it fills
    (``video_encoder``, ``scene_encoder`` or ``audio_embed``); ``params`` is a nested dict of
    float32 numpy arrays shaped like ``nnx.state(component_module)`` (layers stacked);
    ``used_keys`` and ``unused_keys`` partition the checkpoint's keys (original names).
    """

    source: str
    component: str
    params: dict[str, Any]
    used_keys: tuple[str, ...]
    unused_keys: tuple[str, ...]
    notes: dict[str, Any]


# ----------------------------------------------------------------------------- nested dicts


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def module_variables(module: nnx.Module) -> tuple[nnx.State, dict[str, nnx.Variable]]:
    """The state of a module's parameters, fixed position tables and BatchNorm statistics, and its
    variables by ``/``-joined path (setting one and ``nnx.update(module, state)`` changes the
    module)."""
    state = nnx.state(module, (nnx.Param, PositionTable, nnx.BatchStat, FrozenParam))
    return state, {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def variable_shapes(make_module: Callable[[], nnx.Module]) -> dict[str, Shape]:
    """Shapes of :func:`module_variables` of a module, built abstractly (no memory, no compute)."""
    _, variables = module_variables(nnx.eval_shape(make_module))
    return {path: tuple(var.shape) for path, var in variables.items()}


_SHAPES: dict[tuple[type, str], dict[str, Shape]] = {}


def component_shapes(module_cls: type[nnx.Module], cfg) -> dict[str, Shape]:
    """:func:`variable_shapes` of ``module_cls(cfg, rngs=...)``, once per config: tracing a
    full-size ViT-B through ``nnx.eval_shape`` takes seconds."""
    key = (module_cls, cfg.to_json())
    if key not in _SHAPES:
        _SHAPES[key] = variable_shapes(lambda: module_cls(cfg, rngs=nnx.Rngs(0)))
    return _SHAPES[key]


_LAYER = re.compile(r"^(.*/)?layers/(\d+)/(.*)$")


def stack_layers(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{.../layers/i/p: (...)}`` for i = 0 .. n-1 -> ``{.../layers/p: (n, ...)}``, the layout of
    layers under ``nnx.scan``; other paths unchanged. A missing index is an error."""
    out: dict[str, np.ndarray] = {}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for path, value in flat.items():
        match = _LAYER.match(path)
        if match is None:
            out[path] = value
        else:
            prefix, index, rest = match.groups()
            groups.setdefault(f"{prefix or ''}layers/{rest}", {})[int(index)] = value
    for path, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ConversionError(f"{path}: layers {sorted(layers)} are not 0 .. {len(layers) - 1}")
        out[path] = np.stack([layers[i] for i in range(len(layers))])
    return out


# ----------------------------------------------------------------------------- bookkeeping


def strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    """``key`` without its leading ``prefixes``, stripped as long as one matches, so that nested
    wrappers go too (ACAR-Net's training checkpoints: ``module.backbone.module.``)."""
    while prefix := next((p for p in prefixes if key.startswith(p)), None):
        key = key[len(prefix) :]
    return key


def _normalise(state_dict: Mapping[str, np.ndarray], spec: KeySpec) -> tuple[dict, dict, list[str]]:
    """Apply ``strip`` and ``renames``: (arrays by new key, original key by new key, errors)."""
    arrays, original, errors = {}, {}, []
    for key, value in state_dict.items():
        new = strip_prefixes(key, spec.strip)
        for pattern, repl in spec.renames:
            new = re.sub(pattern, repl, new)
        if new in arrays:
            errors.append(f"keys {original[new]!r} and {key!r} both name {new!r}")
        arrays[new], original[new] = value, key
    return arrays, original, errors


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], spec: KeySpec, expected: Mapping[str, Shape]
) -> Converted:
    """Check every key of ``state_dict`` against ``spec``, then convert.

    ``expected`` are the shapes of the target module's variables (:func:`variable_shapes`). Raises
    :class:`ConversionError` naming each missing, extra or wrong-shape key before converting.
    """
    arrays, original, errors = _normalise(state_dict, spec)
    rule_keys = {rule.key for rule in spec.rules}
    for rule in spec.rules:
        if rule.key not in arrays:
            errors.append(f"missing key {rule.key!r} (expected shape {rule.shape})")
        elif tuple(arrays[rule.key].shape) != rule.shape:
            errors.append(
                f"key {original[rule.key]!r} has shape {tuple(arrays[rule.key].shape)}, "
                f"expected {rule.shape}"
            )
    unused_re = re.compile("|".join(f"(?:{p})" for p in spec.unused)) if spec.unused else None
    unused = []
    for key in sorted(set(arrays) - rule_keys):
        if unused_re is not None and unused_re.match(key):
            unused.append(original[key])
        else:
            errors.append(
                f"unexpected key {original[key]!r} with shape {tuple(arrays[key].shape)}: "
                f"nothing in {spec.component} takes it"
            )
    if errors:
        raise ConversionError(
            f"{spec.source} checkpoint does not fit {spec.component}:\n  " + "\n  ".join(errors)
        )
    flat = dict(spec.derived)
    for rule in spec.rules:
        for path, value in rule.make(np.asarray(arrays[rule.key], np.float32)).items():
            flat[path] = np.ascontiguousarray(value, np.float32)
    flat = stack_layers(flat)
    check_complete(flat, expected, f"{spec.source} -> {spec.component}")
    return Converted(
        spec.source,
        spec.component,
        unflatten(flat),
        tuple(original[rule.key] for rule in spec.rules),
        tuple(unused),
        dict(spec.notes),
    )


def check_complete(
    flat: Mapping[str, np.ndarray], expected: Mapping[str, Shape], what: str
) -> None:
    """Every expected variable present with its shape, and nothing else."""
    errors = [
        f"{path}: missing (model shape {shape})"
        for path, shape in expected.items()
        if path not in flat
    ]
    errors += [
        f"{path}: not a variable of the model (shape {tuple(v.shape)})"
        for path, v in flat.items()
        if path not in expected
    ]
    errors += [
        f"{path}: shape {tuple(flat[path].shape)}, model shape {shape}"
        for path, shape in expected.items()
        if path in flat and tuple(flat[path].shape) != tuple(shape)
    ]
    if errors:
        raise ConversionError(f"{what}:\n  " + "\n  ".join(sorted(errors)))


def check_hf_config(hf_config: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Fields of a transformers ``config.json`` that shapes cannot reveal (e.g. the head count)."""
    errors = [
        f"config.json {name} = {hf_config[name]!r}, the config needs {want!r}"
        for name, want in expected.items()
        if name in hf_config and hf_config[name] != want
    ]
    if errors:
        raise ConversionError(
            f"{source}: the checkpoint's config does not match:\n  " + "\n  ".join(errors)
        )


def eps_note(hf_config: Mapping[str, Any] | None, cfg) -> dict[str, Any]:
    """LayerNorm epsilons of checkpoint and model, for the manifest (a difference changes outputs
    by far less than 1e-4, so it is recorded, not refused)."""
    if hf_config is None or "layer_norm_eps" not in hf_config:
        return {}
    return {
        "layer_norm_eps": {"checkpoint": hf_config["layer_norm_eps"], "model": cfg.layer_norm_eps}
    }


# ----------------------------------------------------------------------------- layouts


def linear_rules(src: str, dst: str, n_in: int, n_out: int) -> list[Rule]:
    """``torch.nn.Linear`` (weight (out, in), bias) -> ``Dense`` (kernel (in, out), bias)."""
    return [
        Rule(f"{src}.weight", (n_out, n_in), lambda w: {f"{dst}/kernel": w.T}),
        Rule(f"{src}.bias", (n_out,), lambda b: {f"{dst}/bias": b}),
    ]


def layer_norm_rules(src: str, dst: str, width: int) -> list[Rule]:
    """``torch.nn.LayerNorm`` (weight, bias) -> ``LayerNorm`` (scale, bias)."""
    return [
        Rule(f"{src}.weight", (width,), lambda w: {f"{dst}/scale": w}),
        Rule(f"{src}.bias", (width,), lambda b: {f"{dst}/bias": b}),
    ]


def heads_rule(
    key: str, dst: str, names: Sequence[str], width: int, heads: int, bias: bool
) -> Rule:
    """Projections to heads, fused along the output axis in ``names`` order (``query, key,
    value`` for a fused qkv): weight (n * width, width) -> kernels (width, heads, head_dim),
    bias (n * width,) -> (heads, head_dim)."""
    n, head_dim = len(names), width // heads

    def make(a: np.ndarray) -> dict[str, np.ndarray]:
        parts = np.split(a, n, axis=0)
        if bias:
            return {
                f"{dst}/{name}_bias": p.reshape(heads, head_dim)
                for name, p in zip(names, parts, strict=True)
            }
        return {
            f"{dst}/{name}_kernel": p.T.reshape(width, heads, head_dim)
            for name, p in zip(names, parts, strict=True)
        }

    return Rule(key, (n * width,) if bias else (n * width, width), make)


def attention_out_rules(src: str, dst: str, width: int, heads: int) -> list[Rule]:
    """Output projection: weight (width, width) -> out_kernel (heads, head_dim, width)."""
    return [
        Rule(
            f"{src}.weight",
            (width, width),
            lambda w: {f"{dst}/out_kernel": w.T.reshape(heads, width // heads, width)},
        ),
        Rule(f"{src}.bias", (width,), lambda b: {f"{dst}/out_bias": b}),
    ]


def block_rules(
    dst: str, cfg, *, norm1: str, norm2: str, out: str, fc1: str, fc2: str
) -> list[Rule]:
    """Everything of a pre-norm ViT block except the q/k/v projections, whose layout differs
    between sources; arguments are the source key prefixes."""
    w = cfg.width
    return [
        *layer_norm_rules(norm1, f"{dst}/norm1", w),
        *attention_out_rules(out, f"{dst}/attn", w, cfg.num_heads),
        *layer_norm_rules(norm2, f"{dst}/norm2", w),
        *linear_rules(fc1, f"{dst}/mlp/fc1", w, cfg.mlp_dim),
        *linear_rules(fc2, f"{dst}/mlp/fc2", cfg.mlp_dim, w),
    ]


def conv_rules(
    src: str,
    kernel_shape: Sequence[int],
    in_channels: int,
    width: int,
    *,
    swap_spatial: bool = False,
) -> list[Rule]:
    """``torch.nn.ConvNd`` weight (out, in, *k) -> ``patch_kernel`` (*k, in, out), bias ->
    ``patch_bias``. ``swap_spatial`` reverses a 2D kernel's two spatial axes (AST runs its conv on
    (frequency, time), ours on (time, frequency))."""
    k = len(kernel_shape)
    order = (*range(2, 2 + k), 1, 0)
    if swap_spatial:
        order = (*order[:k][::-1], 1, 0)
    return [
        Rule(
            f"{src}.weight",
            (width, in_channels, *kernel_shape),
            lambda w: {"patch_kernel": w.transpose(order)},
        ),
        Rule(f"{src}.bias", (width,), lambda b: {"patch_bias": b}),
    ]


# ----------------------------------------------------------------------------- table resizing

_CUBIC_A = -0.75  # PyTorch's bicubic (Keys) coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """The (n_out, n_in) matrix that resizes one axis as PyTorch or AST does.

    ``cubic``: ``F.interpolate(mode='bicubic', align_corners=False)`` along one axis (bicubic is
    separable, indices clamped at the borders; BLIP's and VideoMAE's position-table resizing).
    ``linear``: ``mode='linear'/'bilinear', align_corners=False``. ``crop``: AST's rule for its
    position table — keep the centre ``n_out`` entries when shrinking (start ``n_in // 2 -
    n_out // 2``), linear when growing. Every method is the identity when ``n_in == n_out``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize an axis of {n_in} entries to {n_out}")
    if n_in == n_out:
        return np.eye(n_in)
    if method == "crop":
        if n_out > n_in:
            return interpolation_matrix(n_in, n_out, "linear")
        start = n_in // 2 - n_out // 2
        return np.eye(n_in)[start : start + n_out]
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if method == "linear":
        src = np.maximum(src, 0.0)
        offsets, weights = np.array([0, 1]), np.stack([1 - (src % 1), src % 1], axis=-1)
    elif method == "cubic":
        offsets, weights = np.array([-1, 0, 1, 2]), _cubic_weights(src - np.floor(src))
    else:
        raise ValueError(f"unknown interpolation {method!r}; expected cubic, linear or crop")
    cols = np.clip(np.floor(src).astype(int)[:, None] + offsets, 0, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out), len(offsets)), cols.ravel()), weights.ravel())
    return matrix


def resize_grid(table: np.ndarray, grid: Sequence[int], methods: Sequence[str]) -> np.ndarray:
    """Resize a position table laid out as (*grid_in, channels) to (*grid, channels), one
    :func:`interpolation_matrix` per grid axis (computed in float64)."""
    if table.ndim != len(grid) + 1 or len(methods) != len(grid):
        raise ValueError(
            f"table of shape {table.shape} cannot be resized to grid {tuple(grid)} "
            f"with methods {tuple(methods)}"
        )
    out = table.astype(np.float64)
    for axis, (n_out, method) in enumerate(zip(grid, methods)):
        matrix = interpolation_matrix(out.shape[axis], n_out, method)
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out.astype(table.dtype)


def resize_note(grid_in: Iterable[int], grid_out: Iterable[int], methods: Sequence[str]) -> dict:
    """What a position table went through, for the manifest."""
    grid_in, grid_out = tuple(grid_in), tuple(grid_out)
    return {
        "from_grid": list(grid_in),
        "to_grid": list(grid_out),
        "methods": list(methods) if grid_in != grid_out else "identity",
        "positions": [math.prod(grid_in), math.prod(grid_out)],
    }
