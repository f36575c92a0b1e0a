"""Pretrained weights into JoVALE's Flax modules: VideoMAE v2 / transformers VideoMAE or SlowFast
(PySlowFast, ACAR-Net, pytorchvideo) for the video encoder, the BLIP captioner's image encoder
(scene encoder) and AST's patch embedding (audio).

One function per source returns a :class:`Converted` (parameters shaped like the module's
``nnx.state``, plus key bookkeeping); :func:`convert_main` writes several into one orbax checkpoint
(``launch.py convert``) and :func:`load_pretrained` fills a model from it (``--init_from``).
"""

from jovale_jax.convert.ast import convert_hf_ast
from jovale_jax.convert.blip import convert_hf_blip
from jovale_jax.convert.common import (
    ConversionError,
    Converted,
    interpolation_matrix,
    resize_grid,
)
from jovale_jax.convert.io import (
    COMPONENTS,
    SOURCES,
    convert_main,
    convert_source,
    load_component,
    load_into,
    load_pretrained,
    read_checkpoint,
    read_state_dict,
)
from jovale_jax.convert.slowfast import convert_slowfast
from jovale_jax.convert.videomae import convert_hf_videomae, convert_videomae_v2

__all__ = [
    "COMPONENTS",
    "SOURCES",
    "ConversionError",
    "Converted",
    "convert_hf_ast",
    "convert_hf_blip",
    "convert_hf_videomae",
    "convert_main",
    "convert_slowfast",
    "convert_source",
    "convert_videomae_v2",
    "interpolation_matrix",
    "load_component",
    "load_into",
    "load_pretrained",
    "read_checkpoint",
    "read_state_dict",
    "resize_grid",
]
