"""The two jitted programs on a :class:`jovale_jax.state.ShardedModel`, side by side: the train step
(loss, gradients and the optimizer update; ``train.py`` loops over it) and ``predict`` (the
eval-mode forward; evaluation, ``detect`` and the benches call it through :func:`predict_batch`).
Both take the pure pytrees of the model's parameters, frozen parameters and a global batch, with
explicit shardings, and trace inside the mesh (``sharding.TracedInMesh``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jovale_jax import sharding
from jovale_jax.losses import sigmoid_focal_loss
from jovale_jax.models.batch import model_inputs


def step_rngs(template, seed: int, step: jax.Array):
    """Dropout keys for one step: a function of (seed, step, position), never carried over; a
    stacked (scanned) layer's key array keeps its shape, one key per layer."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    leaves, treedef = jax.tree.flatten(template)
    out = []
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.split(jax.random.fold_in(base, i), leaf.shape))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree.unflatten(treedef, out)


def make_train_step(s) -> Callable:
    """The jitted ``(state, frozen, batch) -> (state, metrics)`` of a ``state.ShardedModel``
    ``s``, with explicit shardings. (This module does not import ``state``, which imports it.)"""
    cfg = s.config

    def train_step(state, frozen, batch):
        rngs = step_rngs(s.rng_template, cfg.seed, state["step"])
        example_mask = batch.get("example_mask", jnp.ones(batch["box_mask"].shape[:1], bool))
        mask = batch["box_mask"] & example_mask[:, None]

        def loss_fn(params):
            model = nnx.merge(s.graphdef, params, rngs, frozen)
            logits = model(model_inputs(cfg.model, batch))
            return sigmoid_focal_loss(
                logits, batch["targets"], mask, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma
            )

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = s.tx.update(grads, state["opt_state"], state["params"])
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
        }
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, metrics

    jitted = jax.jit(
        train_step,
        donate_argnums=0,
        in_shardings=(s.state_shardings, s.frozen_shardings, sharding.data_sharding(s.mesh)),
        out_shardings=(s.state_shardings, sharding.replicated(s.mesh)),
    )
    return sharding.TracedInMesh(jitted, s.mesh, sharding.rules_from_config(cfg))


def make_predict(config, mesh, eval_graphdef, rng_template, params_sh, frozen_sh) -> Callable:
    """The jitted eval-mode forward ``(params, frozen, batch) -> {"scores": sigmoid scores
    (B, K, C)}``, with ``"gates"`` (B, K, M), the last AMFN layer's MFA gates per actor and
    modality, when the fusion stage returns them (``JoVALE.forward``'s intermediates)."""

    def predict(params, frozen, batch):
        model = nnx.merge(eval_graphdef, params, rng_template, frozen)
        logits, intermediates = model.forward(model_inputs(config.model, batch))
        out = {"scores": jax.nn.sigmoid(logits)}
        if "gates" in intermediates:
            out["gates"] = intermediates["gates"]
        return out

    jitted = jax.jit(predict, in_shardings=(params_sh, frozen_sh, sharding.data_sharding(mesh)))
    return sharding.TracedInMesh(jitted, mesh, sharding.rules_from_config(config))


def predict_batch(s, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A ``state.ShardedModel``'s ``s.predict`` on a per-process numpy batch: {"scores": sigmoid
    scores (B, K, C)} and, with the AMFN, "gates" (B, K, M); numpy, this process's rows."""
    out = s.predict(s.state["params"], s.frozen, sharding.global_batch(s.mesh, local))
    return {k: sharding.to_host(v) for k, v in out.items()}
