"""AdamW with two learning-rate groups (video backbone / everything else), step decay, warm-up.

Parameters under ``video_encoder`` train at ``config.backbone_lr``, the rest at ``config.lr``; both
are multiplied by ``config.decay_factor`` at each of ``config.decay_epochs`` and ramp up linearly
over ``config.warmup_steps``. Weight decay applies to what a parameter is, not to its rank
(:func:`decays`): kernels (dense, attention and patch-embedding weights) are decayed; biases
(including the (heads, head_dim) attention q/k/v biases), norm scales and biases, position and
temporal embeddings and class tokens are not. Frozen parameters (BLIP) are never handed to the
optimizer.
"""

from __future__ import annotations

import jax
import optax

BACKBONE = "video_encoder"


def lr_schedule(config, base_lr: float, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up to ``base_lr``, then x decay_factor at each decay epoch."""
    boundaries = {int(e * steps_per_epoch): config.decay_factor for e in config.decay_epochs}
    decayed = optax.piecewise_constant_schedule(base_lr, boundaries)
    if not config.warmup_steps:
        return decayed
    warmup = optax.linear_schedule(0.0, base_lr, config.warmup_steps)
    return lambda step: jax.numpy.where(step < config.warmup_steps, warmup(step), decayed(step))


def group_of(path) -> str:
    """'backbone' for the video ViT's parameters, 'rest' otherwise."""
    first = path[0]
    return "backbone" if getattr(first, "key", first) == BACKBONE else "rest"


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


def schedules(config, steps_per_epoch: int) -> dict[str, optax.Schedule]:
    """The learning-rate schedule of each group."""
    return {
        "backbone": lr_schedule(config, config.backbone_lr, steps_per_epoch),
        "rest": lr_schedule(config, config.lr, steps_per_epoch),
    }


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer for a pure-dict tree of trainable parameters."""
    groups = {
        name: optax.adamw(
            sched, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask
        )
        for name, sched in schedules(config, steps_per_epoch).items()
    }
    labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: group_of(p), params)
    tx = optax.multi_transform(groups, labels)
    if config.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx
