"""Reading source checkpoints, writing the converted orbax checkpoint, loading it into a model.

Sources: a ``.pth``/``.pt``/``.bin`` file, PySlowFast's ``.pyth`` or ACAR-Net's ``.pth.tar`` (read
with torch, which is then required; weights nested under ``model``, ``module``, ``state_dict`` or
``model_state`` are found), a ``.safetensors`` file, or a transformers model directory
(``config.json`` plus ``model.safetensors`` or its sharded index; ``pytorch_model.bin`` only as a
fallback). Safetensors are read with
``safetensors.numpy``: torch is never imported for them.

The output directory holds ``params/`` (an orbax PyTree checkpoint of ``{component: params}``,
components among ``video_encoder``, ``scene_encoder``, ``audio_embed``) and ``manifest.json``
(sources, key counts, the unused keys, position-table resizing). :func:`load_pretrained` restores
it into a :class:`jovale_jax.models.JoVALE` (``launch.py train --init_from DIR``), filling the
components the checkpoint and the model both have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jovale_jax.convert.ast import convert_hf_ast
from jovale_jax.convert.blip import convert_hf_blip
from jovale_jax.convert.clip import convert_hf_clip
from jovale_jax.convert.common import (
    ConversionError,
    Converted,
    check_complete,
    flatten,
    module_variables,
)
from jovale_jax.convert.slowfast import convert_slowfast
from jovale_jax.convert.videomae import convert_hf_videomae, convert_videomae_v2
from jovale_jax.models.clip import SCENE_ENCODERS, check_scene_encoder

logger = logging.getLogger("jovale_jax.convert")

COMPONENTS = ("video_encoder", "scene_encoder", "audio_embed")
MANIFEST = "manifest.json"
PARAMS = "params"


@dataclasses.dataclass(frozen=True)
class Source:
    """A ``--from`` choice: the config section it is sized by, its converter
    ``(state_dict, section, config.json or None, **options)`` and the options it takes."""

    section: str
    convert: Callable[..., Converted]
    options: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "videomae_v2": Source(
        "video",
        lambda sd, cfg, _, source_grid: convert_videomae_v2(sd, cfg, source_grid),
        ("source_grid",),
    ),
    "hf_videomae": Source("video", convert_hf_videomae, ("source_grid",)),
    "hf_blip": Source("scene", convert_hf_blip),
    "hf_blip_itm": Source(
        "scene", lambda sd, cfg, hf: convert_hf_blip(sd, cfg, hf, source="hf_blip_itm")
    ),
    "hf_clip": Source("scene", convert_hf_clip),
    "hf_ast": Source("audio", convert_hf_ast),
    **{
        kind: Source("video", lambda sd, cfg, rec, kind=kind: convert_slowfast(sd, cfg, kind, rec))
        for kind in ("pyslowfast", "acar", "pytorchvideo")
    },
}


# The scene source kind each ``model.scene.encoder`` takes (supplementary Table 4).
SCENE_SOURCES = {"blip_captioner": "hf_blip", "blip": "hf_blip_itm", "clip": "hf_clip"}


def check_scene_source(scene_cfg, kind: str, where: str) -> None:
    """A scene checkpoint must be the kind ``model.scene.encoder`` names."""
    encoder = check_scene_encoder(scene_cfg)
    if SCENE_SOURCES[encoder] != kind:
        wants = {k: e for e, k in SCENE_SOURCES.items()}[kind]
        raise ConversionError(
            f"{where} is a {kind!r} scene encoder, which config field model.scene.encoder = "
            f"{wants!r} takes; the config has {encoder!r} (allowed values {SCENE_ENCODERS}, taking "
            f"{tuple(SCENE_SOURCES.values())} checkpoints respectively)"
        )


# ----------------------------------------------------------------------------- reading


def _read_torch(path: Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, the settings the file records or None: a PySlowFast ``.pyth``'s ``cfg``)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs torch (pip install 'jovale-jax[convert]'); "
            "safetensors files and transformers directories do not"
        ) from e
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    recorded = _recorded_cfg(obj, path)
    # training checkpoints nest the weights (PySlowFast's .pyth under "model_state")
    for key in ("model", "module", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"{path}: entries {bad[:5]} are not tensors; expected a state dict "
            "(optionally under 'model', 'module', 'state_dict' or 'model_state')"
        )
    return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}, recorded


def _recorded_cfg(obj: Any, path: Path) -> dict | None:
    """A training checkpoint's own config, ``cfg``: PySlowFast saves ``cfg.dump()`` (YAML)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("cfg"), str):
        return None
    import yaml

    try:
        recorded = yaml.safe_load(obj["cfg"])
    except yaml.YAMLError as e:
        raise ConversionError(f"{path}: its 'cfg' entry is not YAML ({e})") from e
    return recorded if isinstance(recorded, dict) else None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict as numpy arrays, the source's own config or None) of a source path: a
    transformers ``config.json``, or the ``cfg`` a PySlowFast ``.pyth`` records."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else None
        index = path / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in _read_safetensors(path / s).items()}, config
        if (path / "model.safetensors").exists():
            return _read_safetensors(path / "model.safetensors"), config
        if (path / "pytorch_model.bin").exists():
            return _read_torch(path / "pytorch_model.bin")[0], config
        raise FileNotFoundError(f"{path}: no model.safetensors(.index.json) or pytorch_model.bin")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path), None
    if path.suffix in (".pth", ".pt", ".bin", ".pyth", ".tar"):  # .pyth: PySlowFast; .pth.tar
        return _read_torch(path)
    raise ValueError(
        f"{path}: expected a .pth/.pt/.bin/.pyth/.pth.tar or .safetensors file or a "
        "transformers model directory"
    )


# The sizes a transformers config.json holds: its field -> the field of the config section.
_VIT_SIZES = {
    "hidden_size": "width",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim",
    "patch_size": "patch",
    "layer_norm_eps": "layer_norm_eps",
}
CONFIG_JSON_SIZES = {
    "hf_videomae": {**_VIT_SIZES, "tubelet_size": "tubelet"},
    "hf_blip": _VIT_SIZES,
    "hf_ast": {
        "hidden_size": "width",
        "patch_size": "patch",
        "time_stride": "time_stride",
        "frequency_stride": "freq_stride",
    },
}


WEIGHT_FIELDS = sorted({f for sizes in CONFIG_JSON_SIZES.values() for f in sizes.values()})
"""The fields of a config section that define a component's converted weights (their shapes, and
``layer_norm_eps``, which the weights were trained with): recorded in the manifest and checked
when the weights are loaded."""


def sized_by_config_json(kind: str, section, hf_config: Mapping[str, Any] | None):
    """A copy of a config section with the sizes of a transformers ``config.json``, and what
    differs from the preset: ``{field: [preset, checkpoint]}``."""
    if hf_config is None or kind not in CONFIG_JSON_SIZES:
        return section, {}
    sizes = hf_config.get("vision_config", hf_config) if kind == "hf_blip" else hf_config
    section = section.copy_and_resolve_references()
    differs = {}
    for name, field in CONFIG_JSON_SIZES[kind].items():
        if name in sizes and field in section and sizes[name] != section[field]:
            differs[field] = [section[field], sizes[name]]
            section[field] = type(section[field])(sizes[name])
    return section, differs


def convert_source(kind: str, path: str | os.PathLike, model_cfg, **options: Any) -> Converted:
    """Read and convert one ``--from KIND --src PATH`` source for a ``config.model``; ``options``
    (``source_grid``) go to the kinds that take them.

    A transformers directory is converted at the sizes of its ``config.json``; where they differ
    from the preset, ``notes["differs_from_preset"]`` names the ``--config.model.*`` overrides
    that build a model of the checkpoint's size.
    """
    if kind not in SOURCES:
        raise ValueError(f"unknown source {kind!r}; expected one of {sorted(SOURCES)}")
    source = SOURCES[kind]
    if source.section == "scene":
        check_scene_source(model_cfg.scene, kind, f"--from {kind} --src {path}")
    state_dict, hf_config = read_state_dict(path)
    section, differs = sized_by_config_json(kind, model_cfg[source.section], hf_config)
    converted = source.convert(
        state_dict, section, hf_config, **{k: options.get(k) for k in source.options}
    )
    converted_for = {
        f"model.{source.section}.{f}": section[f] for f in WEIGHT_FIELDS if f in section
    }
    converted = dataclasses.replace(
        converted, notes={**converted.notes, "converted_for": converted_for}
    )
    if not differs:
        return converted
    note = {f"model.{source.section}.{field}": v for field, v in differs.items()}
    logger.warning("%s: config.json differs from the preset: %s", kind, note)
    return dataclasses.replace(converted, notes={**converted.notes, "differs_from_preset": note})


# ----------------------------------------------------------------------------- writing


def convert_main(
    sources: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike,
    config,
    *,
    overwrite: bool = False,
    source_grid: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Convert every ``(kind, path)`` source for ``config.model`` and write one checkpoint.

    ``config`` is a full preset config (``config.model`` sizes every component). Every source is
    converted and checked before anything is written; two sources for the same component are an
    error. ``overwrite`` replaces an earlier output of this function; ``source_grid`` is the
    token grid of a VideoMAE checkpoint that does not record it. Returns the manifest (also
    written as ``OUT/manifest.json``).
    """
    out = Path(out_dir).absolute()  # orbax takes absolute paths only
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: pass --overwrite to replace it")
        if not (out / MANIFEST).exists():
            raise FileExistsError(f"{out} is not a converted checkpoint: not replacing it")
    if not sources:
        raise ValueError("no source to convert")
    takes_grid = [k for k, s in SOURCES.items() if "source_grid" in s.options]
    if source_grid is not None and not {k for k, _ in sources} & set(takes_grid):
        raise ValueError(f"--source_grid applies to --from {' / '.join(takes_grid)} only")
    converted: dict[str, Converted] = {}
    paths: dict[str, str] = {}
    for kind, path in sources:
        result = convert_source(kind, path, config.model, source_grid=source_grid)
        if result.component in converted:
            raise ValueError(
                f"{kind} {path} and {converted[result.component].source} "
                f"{paths[result.component]} both convert {result.component}"
            )
        converted[result.component], paths[result.component] = result, str(Path(path).resolve())
    manifest = {
        "format": "jovale-jax pretrained components",
        "components": {
            c: {
                "source": r.source,
                "path": paths[c],
                "used_keys": len(r.used_keys),
                "unused_keys": list(r.unused_keys),
                **r.notes,
            }
            for c, r in converted.items()
        },
    }
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        ocp.PyTreeCheckpointer().save(out / PARAMS, {c: r.params for c, r in converted.items()})
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except BaseException:  # no half-written output (orbax's *-tmp folder) is left behind
        shutil.rmtree(out, ignore_errors=True)
        raise
    logger.info("wrote %s to %s", sorted(converted), out)
    return manifest


def summary(manifest: Mapping[str, Any], out_dir: str | os.PathLike) -> str:
    """A few lines for the terminal: each component's source and key counts, and where the whole
    manifest is."""
    lines = []
    for name, entry in manifest["components"].items():
        lines.append(
            f"{name} <- {entry['source']} {entry['path']}: {entry['used_keys']} keys "
            f"converted, {len(entry['unused_keys'])} unused"
        )
        if entry.get("differs_from_preset"):
            flags = " ".join(
                f"--config.{field}={new}"
                for field, (_, new) in entry["differs_from_preset"].items()
            )
            lines.append(f"  sized by its config.json, not the preset: train with {flags}")
    out = Path(out_dir)
    return "\n".join([*lines, f"wrote {out / PARAMS}; manifest: {out / MANIFEST}"])


# ----------------------------------------------------------------------------- loading


def _placed(value: np.ndarray, like) -> jax.Array:
    """``value`` with the dtype and sharding of the variable value ``like``."""
    value = np.asarray(value, like.dtype)
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jnp.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_component(module: nnx.Module, params: Mapping[str, Any]) -> None:
    """Set every parameter and position table of ``module`` from a converted nested dict.

    The dict must fill the module exactly (same paths, same shapes); values keep the dtype and
    sharding of the variables they replace.
    """
    state, variables = module_variables(module)
    given = flatten(params)
    check_complete(
        given, {p: tuple(v.shape) for p, v in variables.items()}, f"loading {type(module).__name__}"
    )
    for path, var in variables.items():
        var.set_value(_placed(given[path], var.get_value()))
    nnx.update(module, state)


def load_into(model: nnx.Module, converted: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """Fill the components of ``model`` (a JoVALE) named in ``converted`` ({component: params}).

    Returns ``{"filled": [...], "not_in_model": [...], "not_in_checkpoint": [...]}``: a component
    the model does not have (a modality it does not use) is skipped; a component the checkpoint
    lacks keeps its values.
    """
    unknown = sorted(set(converted) - set(COMPONENTS))
    if unknown:
        raise ConversionError(f"unknown components {unknown}; expected some of {COMPONENTS}")
    report: dict[str, list] = {"filled": [], "not_in_model": [], "not_in_checkpoint": []}
    for name in COMPONENTS:
        module = getattr(model, name, None)
        if name in converted and module is not None:
            load_component(module, converted[name])
            report["filled"].append(name)
        elif name in converted:
            report["not_in_model"].append(name)
        elif module is not None:
            report["not_in_checkpoint"].append(name)
    logger.info("pretrained components: %s", report)
    return report


def read_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``{component: params}`` numpy tree written by :func:`convert_main`."""
    path = Path(ckpt_dir).resolve() / PARAMS
    if not path.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no {PARAMS}/ (write it with launch.py convert)")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_pretrained(model: nnx.Module, ckpt_dir: str | os.PathLike) -> dict[str, list]:
    """Restore a converted checkpoint into ``model``; returns :func:`load_into`'s report. A scene
    encoder converted from another kind than ``model.scene.encoder`` takes, or a component
    converted for other sizes (:data:`WEIGHT_FIELDS`) than the model's config, is an error naming
    the config fields."""
    manifest = Path(ckpt_dir) / MANIFEST
    components = json.loads(manifest.read_text())["components"] if manifest.exists() else {}
    scene = components.get("scene_encoder")
    if scene is not None and getattr(model, "scene_encoder", None) is not None:
        check_scene_source(model.cfg.scene, scene["source"], f"{ckpt_dir}'s scene_encoder")
    for name, entry in components.items():
        if getattr(model, name, None) is not None:
            check_converted_for(model.cfg, entry.get("converted_for", {}), f"{ckpt_dir}'s {name}")
    return load_into(model, read_checkpoint(ckpt_dir))


def check_converted_for(model_cfg, converted_for: Mapping[str, Any], what: str) -> None:
    """An error when ``model_cfg`` differs from the fields a component was converted for
    (``{"model.scene.width": 32, ...}``): the fields, both values, the overrides to train with."""
    differs = {}
    for field, value in converted_for.items():
        section = model_cfg
        for key in field.split(".")[1:]:
            section = section.get(key) if hasattr(section, "get") else None
        configured = list(section) if isinstance(section, tuple) else section
        if section is not None and configured != value:
            differs[field] = (value, section)
    if differs:
        fields = ", ".join(f"{f} {v} (this config: {c})" for f, (v, c) in differs.items())
        overrides = " ".join(f"--config.{f}={v}" for f, (v, _) in differs.items())
        raise ConversionError(f"{what} was converted for {fields}: train with {overrides}")
