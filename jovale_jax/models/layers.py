"""Transformer building blocks shared by every stream: dense, LayerNorm, attention, MLP, block.

Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (names from
:mod:`jovale_jax.sharding`), which the sharding rules of the config map onto mesh axes. Creating a
module needs no mesh: sharding is applied by :func:`jovale_jax.sharding.create_sharded`.

Computation runs in ``dtype`` (float32 or bfloat16) while parameters stay float32; LayerNorm
statistics and softmax are always computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.sharding import EMBED, HEADS, KV, MLP

Axes = Sequence[str | None]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes) -> nnx.Param:
    """A float32 parameter initialised by ``init`` and annotated with logical axis names."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match parameter shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), logical_axes=tuple(axes))


def exact_gelu(x: jax.Array) -> jax.Array:
    """The erf GELU of PyTorch ViT, VideoMAE, BLIP and AST (not JAX's tanh default)."""
    return jax.nn.gelu(x, approximate=False)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` over the last axis, with sharding names for both dimensions."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 axes: Axes = (EMBED, EMBED), use_bias: bool = True, dtype=jnp.float32,
                 kernel_init=nnx.initializers.xavier_uniform(), bias_init=nnx.initializers.zeros):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes)
        self.bias = param(rngs, bias_init, (out_features,), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, statistics in float32."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, epsilon: float = 1e-6, dtype=jnp.float32):
        self.scale = param(rngs, nnx.initializers.ones, (features,), (EMBED,))
        self.bias = param(rngs, nnx.initializers.zeros, (features,), (EMBED,))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with per-head projections (D, H, D/H) sharded over 'heads'.

    ``qkv_bias`` selects which of the query, key and value projections have a bias: VideoMAE v2
    has q and v biases only, BLIP all three, the MFE all three.
    """

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs,
                 qkv_bias: tuple[bool, bool, bool] = (True, True, True), dtype=jnp.float32):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        for name, has_bias in zip(("query", "key", "value"), qkv_bias, strict=True):
            setattr(self, f"{name}_kernel", param(rngs, init, (width, num_heads, head_dim), (EMBED, HEADS, KV)))
            bias = param(rngs, nnx.initializers.zeros, (num_heads, head_dim), (HEADS, KV)) if has_bias else None
            setattr(self, f"{name}_bias", bias)
        out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        self.out_kernel = param(rngs, out_init, (num_heads, head_dim, width), (HEADS, KV, EMBED))
        self.out_bias = param(rngs, nnx.initializers.zeros, (width,), (EMBED,))
        self.dtype = dtype

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        y = jnp.einsum("...nd,dhk->...nhk", x, getattr(self, f"{name}_kernel")[...].astype(self.dtype))
        bias = getattr(self, f"{name}_bias")
        return y if bias is None else y + bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """x: (..., N, width); key_mask: (..., N) true for tokens that may be attended to."""
        x = x.astype(self.dtype)
        lead = x.shape[:-2]
        flat = x.reshape((-1,) + x.shape[-2:])
        q, k, v = (self._project(flat, n) for n in ("query", "key", "value"))
        mask = None
        if key_mask is not None:
            mask = key_mask.reshape((-1, 1, 1, key_mask.shape[-1]))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        y = jnp.einsum("bnhk,hkd->bnd", out, self.out_kernel[...].astype(self.dtype))
        y = y + self.out_bias[...].astype(self.dtype)
        return y.reshape(lead + y.shape[-2:])


class Mlp(nnx.Module):
    """Two dense layers with exact GELU (ViT/BLIP/MFE feed-forward)."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = Dense(width, hidden, rngs=rngs, axes=(EMBED, MLP), dtype=dtype)
        self.fc2 = Dense(hidden, width, rngs=rngs, axes=(MLP, EMBED), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(exact_gelu(self.fc1(x)))


class TransformerBlock(nnx.Module):
    """A transformer encoder layer: self-attention and MLP, each with a residual and a LayerNorm.

    ``norm_first=True`` is the pre-norm ViT block (VideoMAE, BLIP); ``False`` is the post-norm
    encoder layer of the original Transformer, used by the MFE ("a SA, two normalisation layers
    and an FFN").
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 norm_first: bool = True, layer_norm_eps: float = 1e-6, dropout: float = 0.0,
                 qkv_bias: tuple[bool, bool, bool] = (True, True, True), dtype=jnp.float32):
        self.norm1 = LayerNorm(width, rngs=rngs, epsilon=layer_norm_eps, dtype=dtype)
        self.attn = Attention(width, num_heads, rngs=rngs, qkv_bias=qkv_bias, dtype=dtype)
        self.norm2 = LayerNorm(width, rngs=rngs, epsilon=layer_norm_eps, dtype=dtype)
        self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.norm_first = norm_first

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.norm1(x), key_mask))
            return x + self.dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, key_mask)))
        return self.norm2(x + self.dropout(self.mlp(x)))


class Encoder(nnx.Module):
    """A stack of identical pre-norm transformer blocks (``remat`` recomputes each in backward)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, qkv_bias: tuple[bool, bool, bool],
                 remat: bool = False, dtype=jnp.float32):
        self.layers = nnx.List([
            TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_dim, rngs=rngs, qkv_bias=qkv_bias,
                             layer_norm_eps=cfg.layer_norm_eps, dtype=dtype)
            for _ in range(cfg.depth)
        ])
        self.remat = remat

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = nnx.remat(lambda blk, h: blk(h))(layer, x) if self.remat else layer(x)
        return x


def dtype_of(name: str):
    """The compute dtype named in a config (``float32`` or ``bfloat16``)."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"config field model.dtype: expected 'float32' or 'bfloat16', got {name!r}")
    return jnp.dtype(name)
