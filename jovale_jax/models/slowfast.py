"""The SlowFast video encoder (Feichtenhofer et al. 2019), detection variant, in Flax NNX.

Two ResNet-3D pathways see the same clip: the Slow pathway ``T / alpha`` frames at full width, the
Fast pathway all ``T`` frames at ``1 / beta_inv`` of the width. After the stem and after res2, res3
and res4 a time-strided convolution (kernel ``fusion_kernel`` x 1 x 1, stride alpha) carries the
Fast features into the Slow pathway, concatenated on channels (optionally followed by BatchNorm and
ReLU: PySlowFast and pytorchvideo have them, ACAR-Net's R101 does not). Bottlenecks follow
SlowFast's temporal kernels: the first 1 x 1 x 1 convolution of a block becomes t x 1 x 1 (slow
res2/res3: 1, slow res4/res5 and all fast stages: 3); the 1 x 3 x 3 one carries the spatial stride
and dilation. For detection (PySlowFast's AVA models, ACAR-Net) res5 has spatial stride 1 and
dilation 2, so the maps are 1/16 of the input.

BatchNorm always runs in inference mode with frozen statistics (``nnx.BatchStat``), as detection
fine-tuning with 2-4 clips per device does; its affine parameters train unless
``model.video.slowfast.freeze_bn_affine``. Layout: (B, T, H, W, C); kernels (t, h, w, in, out).

:class:`SlowFast` maps (B, T, H, W, 3) normalised RGB to JoVALE's visual feature map
(B, T_v, H/16, W/16, C_slow + C_fast): the Slow map (T / alpha steps) and the Fast map (T steps) are
both average-pooled in time to ``model.video.slowfast.time_steps`` = T_v (the paper's 4: 32 / 4 = 8
Slow steps averaged in pairs) and concatenated on channels (2048 + 256 for R50/R101).
:meth:`SlowFast.pathways` returns the two maps separately.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.models.layers import (
    REMAT_POLICIES,
    check_remat_policy,
    dtype_of,
    param,
    resample_time,
)
from jovale_jax.sharding import CONV_IN, EMBED

STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
SLOW_SAMPLINGS = ("linspace", "stride")


class FrozenParam(nnx.Variable):
    """A BatchNorm affine parameter that does not train (``freeze_bn_affine``)."""


def is_slowfast(video_cfg) -> bool:
    """Whether ``model.video.backbone`` selects SlowFast (else the ViT)."""
    backbone = video_cfg.get("backbone", "vit")
    if backbone not in ("vit", "slowfast"):
        raise ValueError(
            f"config field model.video.backbone: expected 'vit' or 'slowfast', got {backbone!r}"
        )
    return backbone == "slowfast"


def _sf(cfg):
    """The ``slowfast`` subsection of a ``model.video`` config."""
    return cfg.slowfast


def stage_depths(cfg) -> tuple[int, int, int, int]:
    """Blocks per stage (res2..res5): ``model.video.slowfast.stage_blocks`` when set (tiny test
    models), else from ``depth``."""
    blocks = tuple(_sf(cfg).get("stage_blocks", ()))
    if blocks:
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(
                f"config field model.video.slowfast.stage_blocks: expected 4 positive "
                f"block counts (res2..res5), got {blocks}"
            )
        return blocks
    depth = _sf(cfg).depth
    if depth not in STAGE_DEPTHS:
        raise ValueError(
            f"config field model.video.slowfast.depth: expected one of "
            f"{sorted(STAGE_DEPTHS)}, got {depth}"
        )
    return STAGE_DEPTHS[depth]


def total_stride(cfg) -> int:
    """Spatial stride of the output maps: stem conv 2, stem pool 2, res3 2, res4 2, res5."""
    return 16 * _sf(cfg).res5_stride


def slowfast_grid(cfg) -> tuple[int, int, int]:
    """The output grid (T_v, h, w) of the encoder for a ``model.video`` config, validated: T_v is
    ``slowfast.time_steps``, h and w the res5 grid (the input / 16)."""
    sf = _sf(cfg)
    stage_depths(cfg)
    if sf.alpha < 1 or cfg.num_frames % sf.alpha:
        raise ValueError(
            f"config field model.video.num_frames: {cfg.num_frames} frames must be "
            f"a multiple of model.video.slowfast.alpha = {sf.alpha}"
        )
    slow_steps = cfg.num_frames // sf.alpha
    if not 1 <= sf.time_steps <= slow_steps:
        raise ValueError(
            f"config field model.video.slowfast.time_steps: {sf.time_steps} must be between 1 "
            f"and the Slow pathway's {slow_steps} frames (model.video.num_frames / alpha)"
        )
    if sf.slow_sampling not in SLOW_SAMPLINGS:
        raise ValueError(
            f"config field model.video.slowfast.slow_sampling: expected one of "
            f"{SLOW_SAMPLINGS}, got {sf.slow_sampling!r}"
        )
    stride = total_stride(cfg)
    h, w = cfg.image_size
    if h < stride or w < stride or h % stride or w % stride:
        raise ValueError(
            f"config field model.video.image_size: {(h, w)} must be a multiple of the "
            f"SlowFast stride {stride} (at least {stride} x {stride})"
        )
    return sf.time_steps, h // stride, w // stride


def slowfast_widths(cfg) -> tuple[int, int]:
    """Output channels (slow, fast) of res5: 32 x width and 32 x width / beta_inv."""
    sf = _sf(cfg)
    return sf.width * 32, sf.width * 32 // sf.beta_inv


def slow_indices(num_frames: int, alpha: int, sampling: str) -> np.ndarray:
    """Frames the Slow pathway sees. ``linspace``: PySlowFast's ``pack_pathway_output`` (and
    ACAR-Net's ``slow_full_span``), ``linspace(0, T - 1, T / alpha)`` truncated; ``stride``:
    every alpha-th frame from the first."""
    if sampling == "stride":
        return np.arange(0, num_frames, alpha)
    return np.linspace(0, num_frames - 1, num_frames // alpha, dtype=np.float32).astype(np.int64)


def _stack_taps(x: jax.Array, taps: int, stride: int, dilation: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T_out, H, W, taps * C): the time-shifted slices of the clip,
    zero-padded by ``taps // 2 * dilation`` frames each side, that the taps of a temporal kernel
    with this stride and dilation meet, stacked on channels (tap-major)."""
    pad = taps // 2 * dilation
    x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
    t_out = (x.shape[1] - dilation * (taps - 1) - 1) // stride + 1
    span = (t_out - 1) * stride + 1
    return jnp.concatenate(
        [x[:, i * dilation : i * dilation + span : stride] for i in range(taps)], axis=-1
    )


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _temporal_conv(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
    """A t x 1 x 1 convolution (t >= 1) by a (t, C, O) kernel: one matrix product over the
    stacked taps, rematerialised, so that the backward pass keeps the clip, not t copies of it."""
    stacked = _stack_taps(x, kernel.shape[0], stride, dilation)
    return jnp.einsum("bthwc,co->bthwo", stacked, kernel.reshape(-1, kernel.shape[-1]))


def conv3d_by_parts(
    x: jax.Array, kernel: jax.Array, stride: Sequence[int], dilation: Sequence[int]
) -> jax.Array:
    """A 3D convolution, (B, T, H, W, C) by a (t, h, w, C, O) kernel with PyTorch's symmetric
    padding (``k // 2`` x dilation), computed as matrix products and 2D convolutions, which
    XLA:CPU runs far faster than its 3D convolutions (bench/README.md, section 10); the same sums
    and multiply-adds:

    * t x 1 x 1 (bottlenecks, shortcuts, temporal kernels, the lateral connections): one matrix
      product over channels, the t time taps stacked on them (:func:`_temporal_conv`);
    * otherwise (1 x 3 x 3, the stems' t x 7 x 7): the taps stacked alike, then a 2D convolution
      over the B * T frames."""
    taps, kh, kw, _, c_out = kernel.shape
    (st, sh, sw), (dt, dh, dw) = stride, dilation
    if kh == kw == 1:
        return _temporal_conv(x[:, :, ::sh, ::sw], kernel[:, 0, 0], st, dt)
    x = _stack_taps(x, taps, st, dt)
    b, t, h, w, c = x.shape
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, h, w, c),
        kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, c, c_out),
        (sh, sw),
        ((kh // 2 * dh,) * 2, (kw // 2 * dw,) * 2),
        rhs_dilation=(dh, dw),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(b, t, *y.shape[1:])


def conv3d(
    x: jax.Array, kernel: jax.Array, stride: Sequence[int], dilation: Sequence[int]
) -> jax.Array:
    """SlowFast's 3D convolution, (B, T, H, W, C) by a (t, h, w, C, O) kernel with PyTorch's
    symmetric padding: by parts on a CPU (:func:`conv3d_by_parts`), XLA's own 3D convolution on
    other backends (cuDNN's on a GPU: on jax 0.11's GPU compiler the by-parts matrix products of
    SlowFast-R50 at 32 x 256 x 464 aborted in its Triton GEMM fusion)."""
    if jax.default_backend() == "cpu":
        return conv3d_by_parts(x, kernel, stride, dilation)
    padding = [(k // 2 * d,) * 2 for k, d in zip(kernel.shape[:3], dilation, strict=True)]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        tuple(stride),
        padding,
        rhs_dilation=tuple(dilation),
        dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
    )


class BatchNorm(nnx.Module):
    """Inference-mode BatchNorm over the last axis: frozen statistics, affine in float32."""

    def __init__(self, features: int, *, eps: float, freeze_affine: bool, rngs: nnx.Rngs):
        kind = FrozenParam if freeze_affine else nnx.Param
        self.scale = kind(jnp.ones((features,)), logical_axes=(EMBED,))
        self.bias = kind(jnp.zeros((features,)), logical_axes=(EMBED,))
        self.mean = nnx.BatchStat(jnp.zeros((features,)), logical_axes=(EMBED,))
        self.var = nnx.BatchStat(jnp.ones((features,)), logical_axes=(EMBED,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mul = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        y = (x.astype(jnp.float32) - self.mean[...]) * mul + self.bias[...]
        return y.astype(x.dtype)


class ConvBN(nnx.Module):
    """Conv3d without bias (PyTorch padding: symmetric, ``kernel // 2`` x dilation), then
    BatchNorm, optionally ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: Sequence[int],
        cfg,
        *,
        rngs: nnx.Rngs,
        stride: Sequence[int] = (1, 1, 1),
        dilation: Sequence[int] = (1, 1, 1),
        bn: bool = True,
        relu: bool = True,
        dtype=jnp.float32,
    ):
        sf = _sf(cfg)
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.kernel = param(rngs, init, (*kernel, c_in, c_out), (None, None, None, CONV_IN, EMBED))
        self.bn = (
            BatchNorm(c_out, eps=sf.bn_eps, freeze_affine=sf.freeze_bn_affine, rngs=rngs)
            if bn
            else None
        )
        self.stride, self.dilation, self.relu = tuple(stride), tuple(dilation), relu
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv3d(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride, self.dilation
        )
        if self.bn is not None:
            y = self.bn(y)
        return jax.nn.relu(y) if self.relu else y


class Bottleneck(nnx.Module):
    """ResNet-3D bottleneck: t x 1 x 1 -> 1 x 3 x 3 (stride, dilation) -> 1 x 1 x 1, each with
    BatchNorm; a 1 x 1 x 1 projection shortcut when the shape changes; ReLU after the sum."""

    def __init__(
        self,
        c_in: int,
        c_inner: int,
        c_out: int,
        temporal: int,
        stride: int,
        dilation: int,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        kw = {"rngs": rngs, "dtype": dtype}
        self.conv_a = ConvBN(c_in, c_inner, (temporal, 1, 1), cfg, **kw)
        self.conv_b = ConvBN(
            c_inner,
            c_inner,
            (1, 3, 3),
            cfg,
            stride=(1, stride, stride),
            dilation=(1, dilation, dilation),
            **kw,
        )
        self.conv_c = ConvBN(c_inner, c_out, (1, 1, 1), cfg, relu=False, **kw)
        self.shortcut = (
            ConvBN(c_in, c_out, (1, 1, 1), cfg, stride=(1, stride, stride), relu=False, **kw)
            if c_in != c_out or stride != 1
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv_c(self.conv_b(self.conv_a(x)))
        return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nnx.Module):
    """t x 7 x 7 convolution, stride (1, 2, 2), BatchNorm, ReLU, then a 1 x 3 x 3 max-pool with
    stride (1, 2, 2) and padding (0, 1, 1)."""

    def __init__(self, c_out: int, temporal: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.conv = ConvBN(
            3, c_out, (temporal, 7, 7), cfg, stride=(1, 2, 2), rngs=rngs, dtype=dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        return jax.lax.reduce_window(
            y,
            -jnp.inf,
            jax.lax.max,  # a scalar init: differentiable
            (1, 1, 3, 3, 1),
            (1, 1, 2, 2, 1),
            ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)),
        )


class Fusion(nnx.Module):
    """Fast -> Slow lateral connection: time-strided convolution, optional BatchNorm + ReLU,
    concatenated after the Slow features."""

    def __init__(self, c_fast: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        sf = _sf(cfg)
        bn = sf.fusion_bn_relu
        self.conv = ConvBN(
            c_fast,
            c_fast * sf.fusion_channel_ratio,
            (sf.fusion_kernel, 1, 1),
            cfg,
            stride=(sf.alpha, 1, 1),
            bn=bn,
            relu=bn,
            rngs=rngs,
            dtype=dtype,
        )

    def __call__(self, slow: jax.Array, fast: jax.Array) -> jax.Array:
        lateral = self.conv(fast)
        if lateral.shape[1] != slow.shape[1]:
            raise ValueError(
                f"SlowFast fusion: the lateral connection gives {lateral.shape[1]} "
                f"time steps, the Slow pathway has {slow.shape[1]}"
            )
        return jnp.concatenate([slow, lateral.astype(slow.dtype)], axis=-1)


class SlowFast(nnx.Module):
    """SlowFast encoder: (B, T, H, W, 3) -> (B, T_v, H / 16, W / 16, C_slow + C_fast)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype: str = "float32", remat_policy: str = "none"):
        self.cfg = cfg
        self.dtype = dtype_of(dtype)
        sf = _sf(cfg)
        depths = stage_depths(cfg)
        slowfast_grid(cfg)
        temporal_blocks = tuple(sf.temporal_kernel_blocks) or depths
        if (
            len(temporal_blocks) != 4
            or len(sf.slow_temporal_kernels) != 5
            or len(sf.fast_temporal_kernels) != 5
        ):
            raise ValueError(
                "config fields model.video.slowfast.temporal_kernel_blocks (4 stages) "
                "and slow/fast_temporal_kernels (stem + 4 stages) have wrong lengths: "
                f"{tuple(temporal_blocks)}, {tuple(sf.slow_temporal_kernels)}, "
                f"{tuple(sf.fast_temporal_kernels)}"
            )
        kw = {"rngs": rngs, "dtype": self.dtype}
        w, beta_inv, ratio = sf.width, sf.beta_inv, sf.fusion_channel_ratio
        self.slow_stem = Stem(w, sf.slow_temporal_kernels[0], cfg, **kw)
        self.fast_stem = Stem(w // beta_inv, sf.fast_temporal_kernels[0], cfg, **kw)
        self.fusions = nnx.List([Fusion(w // beta_inv, cfg, **kw)])
        strides = (1, 2, 2, sf.res5_stride)
        dilations = (1, 1, 1, sf.res5_dilation)
        slow_stages, fast_stages = [], []
        c_slow, c_fast = w + w // beta_inv * ratio, w // beta_inv
        for i, n in enumerate(depths):
            out, inner = w * 4 * 2**i, w * 2**i
            for kernels, stages, c_in, div in (
                (sf.slow_temporal_kernels, slow_stages, c_slow, 1),
                (sf.fast_temporal_kernels, fast_stages, c_fast, beta_inv),
            ):
                stages.append(
                    nnx.List(
                        [
                            Bottleneck(
                                c_in if j == 0 else out // div,
                                inner // div,
                                out // div,
                                kernels[i + 1] if j < temporal_blocks[i] else 1,
                                strides[i] if j == 0 else 1,
                                dilations[i],
                                cfg,
                                **kw,
                            )
                            for j in range(n)
                        ]
                    )
                )
            if i < 3:
                self.fusions.append(Fusion(out // beta_inv, cfg, **kw))
            c_slow, c_fast = out + out // beta_inv * ratio, out // beta_inv
        self.slow_stages, self.fast_stages = nnx.List(slow_stages), nnx.List(fast_stages)
        self.remat_policy = check_remat_policy(remat_policy)

    def _stage(self, blocks, x: jax.Array) -> jax.Array:
        for block in blocks:
            if self.remat_policy == "none":
                x = block(x)
            else:  # each bottleneck's activations recomputed in the backward pass
                policy = REMAT_POLICIES[self.remat_policy]
                x = nnx.remat(lambda blk, h: blk(h), policy=policy)(block, x)
        return x

    def pathways(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, T, H, W, 3) -> Slow (B, T / alpha, h, w, C_slow) and Fast (B, T, h, w, C_fast)."""
        sf = _sf(self.cfg)
        if video.shape[1] != self.cfg.num_frames:
            raise ValueError(
                f"SlowFast: got {video.shape[1]} frames, config field "
                f"model.video.num_frames is {self.cfg.num_frames}"
            )
        idx = slow_indices(video.shape[1], sf.alpha, sf.slow_sampling)
        video = video.astype(self.dtype)
        slow, fast = self.slow_stem(video[:, idx]), self.fast_stem(video)
        for i in range(4):
            if i < len(self.fusions):
                slow = self.fusions[i](slow, fast)
            slow = self._stage(self.slow_stages[i], slow)
            fast = self._stage(self.fast_stages[i], fast)
        return slow, fast

    def __call__(self, video: jax.Array) -> jax.Array:
        slow, fast = self.pathways(video)
        steps = _sf(self.cfg).time_steps
        slow = resample_time(slow, steps, axis=1)
        fast = resample_time(fast, steps, axis=1).astype(slow.dtype)
        return jnp.concatenate([slow, fast], axis=-1)
