"""Transformer building blocks shared by every stream: dense, LayerNorm, attention, MLP, block.

Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (names from
:mod:`jovale_jax.sharding`), which the sharding rules of the config map onto mesh axes. Creating a
module needs no mesh: sharding is applied by :func:`jovale_jax.sharding.create_sharded`.

Computation runs in ``dtype`` (float32 or bfloat16) while parameters stay float32; LayerNorm
statistics and softmax are always computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.sharding import BATCH, EMBED, HEADS, KV, MLP, constrain

Axes = Sequence[str | None]


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes) -> nnx.Param:
    """A float32 parameter initialised by ``init`` and annotated with logical axis names."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match parameter shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), logical_axes=tuple(axes))


def exact_gelu(x: jax.Array) -> jax.Array:
    """The erf GELU of PyTorch ViT, VideoMAE, BLIP and AST (not JAX's tanh default)."""
    return jax.nn.gelu(x, approximate=False)


XAVIER_UNIFORM = nnx.initializers.xavier_uniform()


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` over the last axis, with sharding names for both dimensions."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        axes: Axes = (EMBED, EMBED),
        use_bias: bool = True,
        dtype=jnp.float32,
        kernel_init=XAVIER_UNIFORM,
        bias_init=nnx.initializers.zeros,
    ):
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


ATTENTION_IMPLS = ("xla", "cudnn", "auto")


def attention_implementation(name: str, dtype) -> str:
    """``model.attention_impl`` resolved for this process's backend and compute ``dtype``:
    ``auto`` is XLA's everywhere for now. ``cudnn`` (bfloat16 / float16 only) is opt-in: the first
    GPU run of the AVA preset (jax 0.11.2, bench/README.md section 12) stopped in cuDNN's checks
    twice, fixed since but not yet re-run on a GPU, and that run's numbers are XLA's."""
    if name not in ATTENTION_IMPLS:
        raise ValueError(
            f"config field model.attention_impl: expected one of {ATTENTION_IMPLS}, got {name!r}"
        )
    if name == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            "config field model.attention_impl: 'cudnn' needs model.dtype bfloat16 (or 'auto' "
            f"on a GPU); the model computes in {jnp.dtype(dtype).name}"
        )
    return "xla" if name == "auto" else name


def cudnn_takes(implementation: str, tokens: int) -> bool:
    """Whether ``implementation`` runs cuDNN's fused kernel on ``tokens`` tokens. jax 0.11's
    cuDNN attention refuses an odd token count once differentiated ("Unsupported sequence length":
    its VJP rule counts a bias that is not there), so such layers (BLIP's 577 tokens) take the
    XLA path; the others keep the fused kernel."""
    return implementation == "cudnn" and tokens % 2 == 0


def cudnn_mask(key_mask: jax.Array) -> jax.Array:
    """A key mask (B, N) as cuDNN's attention takes it, (B, 1, N, N): jax turns it into a bias,
    which must span the queries too ("Bias must have same seq length as QKV")."""
    n = key_mask.shape[-1]
    return jnp.broadcast_to(key_mask[:, None, None, :], (key_mask.shape[0], 1, n, n))


class Attention(nnx.Module):
    """Multi-head self-attention with per-head projections (D, H, D/H) sharded over 'heads'.

    ``qkv_bias`` selects which of the query, key and value projections have a bias: VideoMAE v2
    has q and v biases only, BLIP all three, the MFE all three. ``implementation`` (see
    :func:`attention_implementation`): ``xla``, the attention written out head-major here (the
    sums of ``jax.nn.dot_product_attention``'s XLA path, which XLA:CPU runs about 2x slower for
    its transposes), or ``cudnn``, that function's fused kernel where cuDNN takes the token count
    (:func:`cudnn_takes`).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        rngs: nnx.Rngs,
        qkv_bias: tuple[bool, bool, bool] = (True, True, True),
        dtype=jnp.float32,
        implementation: str = "xla",
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads

        def kernel():
            init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
            return param(rngs, init, (width, num_heads, head_dim), (EMBED, HEADS, KV))

        def bias(present: bool):
            if not present:
                return None
            return param(rngs, nnx.initializers.zeros, (num_heads, head_dim), (HEADS, KV))

        self.query_kernel, self.query_bias = kernel(), bias(qkv_bias[0])
        self.key_kernel, self.key_bias = kernel(), bias(qkv_bias[1])
        self.value_kernel, self.value_bias = kernel(), bias(qkv_bias[2])
        out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        self.out_kernel = param(rngs, out_init, (num_heads, head_dim, width), (HEADS, KV, EMBED))
        self.out_bias = param(rngs, nnx.initializers.zeros, (width,), (EMBED,))
        self.dtype = dtype
        self.implementation = implementation

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None, spec: str):
        """x (B, N, D) projected to the heads, laid out as ``spec`` says (``bnhk`` or ``bhnk``)."""
        y = jnp.einsum(f"bnd,dhk->{spec}", x, kernel[...].astype(self.dtype))
        if bias is None:
            return y
        b = bias[...].astype(self.dtype)  # (H, K)
        return y + (b if spec == "bnhk" else b[:, None])

    def _flatten(self, x: jax.Array, key_mask: jax.Array | None):
        """(leading axes, x as (B, N, D) in the compute dtype, key_mask as (B, N) or None)."""
        flat = x.astype(self.dtype).reshape((-1,) + x.shape[-2:])
        flat_mask = None if key_mask is None else key_mask.reshape((-1, key_mask.shape[-1]))
        return x.shape[:-2], flat, flat_mask

    def _head_major_weights(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """The softmax weights (B, H, N, N), float32, of x (B, N, D), as
        ``jax.nn.dot_product_attention``'s XLA path computes them but head-major, which XLA:CPU
        multiplies without transposes (bench/README.md, section 10)."""
        q = self._project(x, self.query_kernel, self.query_bias, "bhnk")
        k = self._project(x, self.key_kernel, self.key_bias, "bhnk")
        logits = jnp.einsum("bhqk,bhnk->bhqn", q, k, preferred_element_type=jnp.float32)
        logits = logits * np.float32(1 / np.sqrt(q.shape[-1]))
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(logits, axis=-1)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """x: (..., N, width); key_mask: (..., N) true for tokens that may be attended to."""
        lead, flat, flat_mask = self._flatten(x, key_mask)
        out_kernel = self.out_kernel[...].astype(self.dtype)
        if not cudnn_takes(self.implementation, flat.shape[1]):
            weights = self._head_major_weights(flat, flat_mask).astype(self.dtype)
            v = self._project(flat, self.value_kernel, self.value_bias, "bhnk")
            out = jnp.einsum("bhqn,bhnk->bhqk", weights, v)
            y = jnp.einsum("bhqk,hkd->bqd", out, out_kernel)
        else:  # a fused kernel of jax.nn.dot_product_attention, on (B, N, H, K)
            q, k, v = (
                self._project(flat, kernel, bias, "bnhk")
                for kernel, bias in (
                    (self.query_kernel, self.query_bias),
                    (self.key_kernel, self.key_bias),
                    (self.value_kernel, self.value_bias),
                )
            )
            mask = None if flat_mask is None else cudnn_mask(flat_mask)
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, implementation=self.implementation
            )
            y = jnp.einsum("bnhk,hkd->bnd", out, out_kernel)
        y = y + self.out_bias[...].astype(self.dtype)
        return y.reshape(lead + y.shape[-2:])

    def weights(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """The softmax weights (..., heads, N, N) that ``__call__`` applies to ``x`` (float32;
        for inspection, e.g. the attention maps of :meth:`jovale_jax.models.AMFN.attention`)."""
        lead, flat, flat_mask = self._flatten(x, key_mask)
        weights = self._head_major_weights(flat, flat_mask)
        return weights.reshape(lead + weights.shape[1:])


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": exact_gelu, "quick_gelu": quick_gelu}


class Mlp(nnx.Module):
    """Two dense layers with exact GELU (ViT/BLIP/MFE feed-forward) or CLIP's ``quick_gelu``."""

    def __init__(
        self,
        width: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        activation: str = "gelu",
    ):
        self.fc1 = Dense(width, hidden, rngs=rngs, axes=(EMBED, MLP), dtype=dtype)
        self.fc2 = Dense(hidden, width, rngs=rngs, axes=(MLP, EMBED), dtype=dtype)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class DropPath(nnx.Module):
    """Stochastic depth (timm's ``DropPath``): in training, zero a whole residual branch per
    example with probability ``rate`` and scale the kept ones by 1 / (1 - rate); the identity in
    eval mode (``deterministic``). ``rate`` is a call argument so that it can differ per layer
    under ``nnx.scan``."""

    def __init__(self, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.rngs = rngs["dropout"].fork()
        self.deterministic = deterministic

    def __call__(self, x: jax.Array, rate: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        kept = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(kept, x / keep.astype(x.dtype), jnp.zeros_like(x))


class TransformerBlock(nnx.Module):
    """A transformer encoder layer: self-attention and MLP, each with a residual and a LayerNorm.

    ``norm_first=True`` is the pre-norm ViT block (VideoMAE, BLIP), also the MFE's default
    (``model.amfn.norm_first``; the paper's "a SA, two normalisation layers and an FFN" does not
    place the norms, README "Decisions"); ``False`` is the post-norm encoder layer of the original
    Transformer. ``drop_path`` adds stochastic depth on both residual branches (pre-norm only),
    at the rate given to the call.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        *,
        rngs: nnx.Rngs,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        qkv_bias: tuple[bool, bool, bool] = (True, True, True),
        dtype=jnp.float32,
        attention_impl: str = "xla",
        drop_path: bool = False,
        activation: str = "gelu",
    ):
        self.norm1 = LayerNorm(width, rngs=rngs, epsilon=layer_norm_eps, dtype=dtype)
        self.attn = Attention(
            width,
            num_heads,
            rngs=rngs,
            qkv_bias=qkv_bias,
            dtype=dtype,
            implementation=attention_impl,
        )
        self.norm2 = LayerNorm(width, rngs=rngs, epsilon=layer_norm_eps, dtype=dtype)
        self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype, activation=activation)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        if drop_path and not norm_first:
            raise ValueError("drop_path needs a pre-norm block (norm_first=True)")
        self.drop_path = DropPath(rngs=rngs) if drop_path else None
        self.norm_first = norm_first

    def _branch(self, y: jax.Array, drop_rate: jax.Array | None) -> jax.Array:
        y = self.dropout(y)
        return y if self.drop_path is None else self.drop_path(y, drop_rate)

    def __call__(
        self, x: jax.Array, key_mask: jax.Array | None = None, drop_rate: jax.Array | None = None
    ) -> jax.Array:
        if self.norm_first:
            x = x + self._branch(self.attn(self.norm1(x), key_mask), drop_rate)
            return x + self._branch(self.mlp(self.norm2(x)), drop_rate)
        x = self.norm1(x + self.dropout(self.attn(x, key_mask)))
        return self.norm2(x + self.dropout(self.mlp(x)))

    def attention_weights(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """The self-attention weights (..., heads, N, N) of this block on ``x``."""
        return self.attn.weights(self.norm1(x) if self.norm_first else x, key_mask)


# ----------------------------------------------------------------------------- stacked layers

REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every activation kept for the backward pass
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(name: str) -> str:
    """Validate ``model.remat_policy``."""
    if name not in REMAT_POLICIES:
        raise ValueError(
            f"config field model.remat_policy: expected one of "
            f"{tuple(REMAT_POLICIES)}, got {name!r}"
        )
    return name


def stack_layers(
    make_layer: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs
) -> nnx.Module:
    """``depth`` independently initialised ``make_layer(rngs)`` as one module whose variables
    carry a leading layer axis (replicated: ``None`` is prefixed to their ``logical_axes``)."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=depth)
    def make(r: nnx.Rngs) -> nnx.Module:
        return make_layer(r)

    layers = make(rngs)
    for _, var in nnx.iter_graph(layers):
        if isinstance(var, nnx.Variable):
            axes = var.get_metadata("logical_axes", None)
            if axes is not None:
                var.set_metadata("logical_axes", (None, *axes))
    return layers


def batch_major(tree: Any) -> Any:
    """Every array of ``tree`` constrained to keep its first (batch) axis on ``BATCH``'s mesh axis
    (see :func:`jovale_jax.sharding.activation_sharding`)."""
    return jax.tree.map(lambda x: constrain(x, (BATCH,) + (None,) * (x.ndim - 1)), tree)


def scan_layers(
    layers: nnx.Module,
    body: Callable,
    carry: Any,
    xs: Any = (),
    remat_policy: str = "none",
    *,
    outputs: bool = False,
) -> Any:
    """Run ``carry = body(layer, carry, x)`` over the stacked ``layers`` (and the leading axis of
    ``xs``) with ``nnx.scan``, each step under ``nnx.remat`` with the named policy unless
    ``none``. Arrays the body closes over are broadcast to every layer. The carry (batch-major
    arrays) is sharding-constrained at every layer boundary (:func:`batch_major`).

    With ``outputs``, ``body`` returns ``(carry, y)`` and the result is ``(carry, ys)``: each
    layer's ``y`` stacked on a leading layer axis (under ``jax.jit``, what no caller uses is
    dropped from the compiled program)."""

    def step(layer, c, x):
        out = body(layer, batch_major(c), x)
        return (batch_major(out[0]), out[1]) if outputs else batch_major(out)

    if check_remat_policy(remat_policy) != "none":
        step = nnx.remat(step, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
    out_axes = (nnx.Carry, 0) if outputs else nnx.Carry
    scan = nnx.scan(step, in_axes=(0, nnx.Carry, 0), out_axes=out_axes)
    return scan(layers, carry, xs)


# ----------------------------------------------------------------------------- time and masks


def resample_matrix(t_in: int, t_out: int) -> np.ndarray:
    """The (t_out, t_in) matrix of temporal alignment (Cooper 2019, as the paper applies it).

    Adaptive average pooling when ``t_in >= t_out`` (output i averages inputs
    floor(i t_in / t_out) .. ceil((i + 1) t_in / t_out) - 1, as PyTorch's AdaptiveAvgPool1d), and
    repetition when ``t_in < t_out`` (output i copies input floor(i t_in / t_out)). De-alignment is
    the same rule applied from T_c back to T_m.
    """
    m = np.zeros((t_out, t_in), np.float32)
    for i in range(t_out):
        if t_in >= t_out:
            lo, hi = (i * t_in) // t_out, -((-(i + 1) * t_in) // t_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        else:
            m[i, (i * t_in) // t_out] = 1.0
    return m


def resample_time(x: jax.Array, t_out: int, axis: int) -> jax.Array:
    """Resample ``x`` along ``axis`` to ``t_out`` steps with :func:`resample_matrix`."""
    t_in = x.shape[axis]
    if t_in == t_out:
        return x
    mat = jnp.asarray(resample_matrix(t_in, t_out), x.dtype)
    return jnp.moveaxis(jnp.tensordot(mat, jnp.moveaxis(x, axis, 0), axes=1), 0, axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Mean of ``x`` over ``axis`` counting only entries where ``mask`` (broadcastable) is true."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def step_tables(rngs: nnx.Rngs, steps: dict[str, int], dim: int) -> nnx.Dict:
    """One learned (T_m, D) table per modality, N(0, 0.02): a vector per time step."""
    init = nnx.initializers.normal(0.02)
    return nnx.Dict({m: param(rngs, init, (t, dim), (None, EMBED)) for m, t in steps.items()})


def add_time_embedding(context: dict[str, jax.Array], tables: nnx.Dict) -> dict[str, jax.Array]:
    """Context tokens {m: (B, T_m, N_m, D)} plus their time step's vector of ``tables[m]``: the
    temporal position that an encoder attending across time needs (TimeSformer's time
    embedding)."""
    return {
        m: ctx + tables[m][...].astype(ctx.dtype)[None, :, None] if m in tables else ctx
        for m, ctx in context.items()
    }


def drop_path_rates(rate: float, depth: int) -> np.ndarray:
    """Per-layer stochastic-depth rates rising linearly from 0 to ``rate`` (timm, VideoMAE)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"config field model.video.drop_path: expected a rate in [0, 1), got {rate}"
        )
    return np.linspace(0.0, rate, depth, dtype=np.float32)


class Encoder(nnx.Module):
    """A stack of ``cfg.depth`` identical pre-norm transformer blocks under ``nnx.scan``.

    The blocks' parameters are stacked on a leading layer axis (``layers.attn.query_kernel`` is
    (depth, width, heads, head_dim)); ``remat_policy`` names the rematerialisation of each block
    (:data:`REMAT_POLICIES`); ``drop_path`` is the stochastic depth of the last block.
    """

    def __init__(
        self,
        cfg,
        *,
        rngs: nnx.Rngs,
        qkv_bias: tuple[bool, bool, bool],
        remat_policy: str = "none",
        dtype=jnp.float32,
        attention_impl: str = "xla",
        drop_path: float = 0.0,
        activation: str = "gelu",
    ):
        self.drop_rates = tuple(float(r) for r in drop_path_rates(drop_path, cfg.depth))
        self.remat_policy = check_remat_policy(remat_policy)
        self.layers = stack_layers(
            lambda r: TransformerBlock(
                cfg.width,
                cfg.num_heads,
                cfg.mlp_dim,
                rngs=r,
                qkv_bias=qkv_bias,
                layer_norm_eps=cfg.layer_norm_eps,
                dtype=dtype,
                attention_impl=attention_impl,
                drop_path=drop_path > 0,
                activation=activation,
            ),
            cfg.depth,
            rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return scan_layers(
            self.layers,
            lambda blk, h, rate: blk(h, drop_rate=rate),
            x,
            jnp.asarray(self.drop_rates, jnp.float32),
            self.remat_policy,
        )


def dtype_of(name: str):
    """The compute dtype named in a config: ``float32``, ``bfloat16``, or ``auto`` (bfloat16 on
    a GPU, float32 elsewhere)."""
    if name == "auto":
        return jnp.dtype(jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32)
    if name not in ("float32", "bfloat16"):
        raise ValueError(
            f"config field model.dtype: expected 'float32', 'bfloat16' or 'auto', got {name!r}"
        )
    return jnp.dtype(name)
