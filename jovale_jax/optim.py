"""AdamW with per-parameter-group learning rates and weight decay, step decay, warm-up.

Groups come from the config as big_vision's ``lr_mults`` / ``wd_mults``: ``config.lr_mults`` is a
sequence of ``(regex, multiplier)``; a parameter whose '/'-joined path (``video_encoder/encoder/
layers/attn/query_kernel``) fully matches a regex trains at ``config.lr`` x that multiplier (the
first match wins; no match: x1). ``config.wd_mults`` does the same for ``config.weight_decay``. All
rates are multiplied by ``config.decay_factor`` at each of ``config.decay_epochs`` and ramp up
linearly over ``config.warmup_steps``. Weight decay applies to what a parameter is, not to its rank
(:func:`decays`): kernels (dense, attention and patch-embedding weights) are decayed; biases
(including the (heads, head_dim) attention q/k/v biases), norm scales and biases, position and
temporal embeddings and class tokens are not. Frozen parameters (BLIP) are never handed to the
optimizer.
"""

from __future__ import annotations

import re

import jax
import optax


def lr_schedule(config, base_lr: float, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up to ``base_lr``, then x decay_factor at each decay epoch."""
    boundaries = {int(e * steps_per_epoch): config.decay_factor for e in config.decay_epochs}
    decayed = optax.piecewise_constant_schedule(base_lr, boundaries)
    if not config.warmup_steps:
        return decayed
    warmup = optax.linear_schedule(0.0, base_lr, config.warmup_steps)
    return lambda step: jax.numpy.where(step < config.warmup_steps, warmup(step), decayed(step))


def path_name(path) -> str:
    """A pytree key path as the '/'-joined name the ``*_mults`` regexes match."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def multiplier(mults, name: str, field: str) -> float:
    """The multiplier of the first ``(regex, mult)`` in ``mults`` that fully matches ``name``."""
    for pattern, mult in mults:
        try:
            if re.fullmatch(pattern, name):
                return float(mult)
        except re.error as e:
            raise ValueError(f"config.{field}: invalid regex {pattern!r}: {e}") from None
    return 1.0


def group_of(config, path) -> str:
    """The optimizer group of the parameter at ``path``: its lr and wd multipliers, as a name."""
    name = path_name(path)
    lr = multiplier(config.lr_mults, name, "lr_mults")
    wd = multiplier(config.wd_mults, name, "wd_mults")
    return f"x{lr:g}" + ("" if wd == 1.0 else f"_wd_x{wd:g}")


def _group_multipliers(group: str) -> tuple[float, float]:
    lr, _, wd = group[1:].partition("_wd_x")
    return float(lr), float(wd or 1.0)


def decays(path) -> bool:
    """Whether weight decay applies to the parameter at ``path`` (a pytree key path).

    By the parameter's name, as the models name them: ``*kernel`` is decayed; ``*bias``,
    ``*scale`` and anything under an ``*embed`` / ``*embedding`` / ``*token`` / ``messages`` name
    (learned tokens: cross-frame message tokens included) is not. Any other
    name is an error, so that a new kind of parameter is classified before it trains.
    """
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    leaf = names[-1]
    if leaf.endswith("kernel"):
        return True
    if leaf.endswith(("bias", "scale")):
        return False
    if any(n.endswith(("embed", "embedding", "token", "tokens", "messages")) for n in names):
        return False
    raise ValueError(
        f"weight decay: unclassified parameter {'/'.join(names)} (name it *kernel, "
        f"*bias, *scale or *embedding, or extend optim.decays)"
    )


def decay_mask(params):
    """A pytree of bools like ``params``: true where weight decay applies (:func:`decays`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def groups(config, params) -> list[str]:
    """The groups the parameters of ``params`` fall into (``x<lr mult>[_wd_x<wd mult>]``)."""
    return sorted({group_of(config, p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]})


def schedules(config, steps_per_epoch: int, params) -> dict[str, optax.Schedule]:
    """The learning-rate schedule of each group of ``params`` (config.lr x the group's mult)."""
    return {
        g: lr_schedule(config, config.lr * _group_multipliers(g)[0], steps_per_epoch)
        for g in groups(config, params)
    }


def make_optimizer(config, steps_per_epoch: int, params) -> optax.GradientTransformation:
    """The optimizer for a pure-dict tree of trainable parameters (``params`` may be abstract)."""
    transforms = {
        g: optax.adamw(
            sched,
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay * _group_multipliers(g)[1],
            mask=decay_mask,
        )
        for g, sched in schedules(config, steps_per_epoch, params).items()
    }
    labels = lambda tree: jax.tree_util.tree_map_with_path(lambda p, _: group_of(config, p), tree)
    tx = optax.multi_transform(transforms, labels)
    if config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
