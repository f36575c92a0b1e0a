"""Flax NNX modules of JoVALE; each takes its sizes from a config section and is usable alone."""

from jovale_jax.models.amfn import AMFN, MFA, MFE
from jovale_jax.models.audio import AudioPatchEmbed
from jovale_jax.models.blip import BlipVisionEncoder
from jovale_jax.models.heads import ActionHead
from jovale_jax.models.jovale import ActorFeatures, JoVALE
from jovale_jax.models.layers import resample_matrix
from jovale_jax.models.roi_align import roi_align
from jovale_jax.models.slowfast import SlowFast
from jovale_jax.models.vit import VideoEncoder

__all__ = [
    "AMFN",
    "MFA",
    "MFE",
    "ActionHead",
    "ActorFeatures",
    "AudioPatchEmbed",
    "BlipVisionEncoder",
    "JoVALE",
    "SlowFast",
    "VideoEncoder",
    "resample_matrix",
    "roi_align",
]
