"""Each modality's RoI boxes (Table 5's fusion strategies): the video map is pooled at the boxes
placed on the video canvas (``frame_extent``), the scene map at the boxes in its own frame, for a
frame that does not fill the canvas, flipped or not."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_forward, random_batch
from flax import nnx

from jovale_jax.models import JoVALE
from jovale_jax.models.fusion import FUSION_STRATEGIES

# A frame filling the top-left quarter of the canvas; a 4:3 frame on a 16:9 canvas, flipped (the
# pipeline's flip moves the frame to the other side of the canvas: x1, x2 -> 1 - x2, 1 - x1).
EXTENTS = {"quarter": (0.0, 0.0, 0.5, 0.5), "4:3_flipped": (0.44, 0.0, 1.0, 1.0)}
ROI_STRATEGIES = tuple(s for s in FUSION_STRATEGIES if s.startswith("roi_"))


def _setup(tiny_config, strategy: str, flat: str, extent):
    """A video + scene model whose ``flat`` stream's context is constant (its projection zeroed,
    so no box can change what is pooled from it), its forward, and a batch with ``extent``."""
    cfg = tiny_config.model
    cfg.modalities = ("video", "scene")
    cfg.fusion_strategy = strategy
    model = JoVALE(cfg, rngs=nnx.Rngs(0))
    proj = getattr(model, f"{flat}_proj")
    proj.kernel[...] = jnp.zeros_like(proj.kernel[...])
    batch = random_batch(cfg, batch_size=2, seed=5)
    batch["box_mask"][:] = True
    batch["frame_extent"] = np.tile(np.asarray(extent, np.float32), (2, 1))
    return make_forward(model), batch


def _on_canvas(boxes: np.ndarray, extent) -> np.ndarray:
    """Frame-normalised boxes -> canvas-normalised, computed here by hand."""
    x1, y1, x2, y2 = extent
    scale = np.array([x2 - x1, y2 - y1] * 2, np.float32)
    return (np.array([x1, y1] * 2, np.float32) + boxes * scale).astype(np.float32)


@pytest.mark.parametrize("extent", EXTENTS.values(), ids=EXTENTS.keys())
@pytest.mark.parametrize("strategy", FUSION_STRATEGIES)
def test_video_rois_are_on_the_canvas(tiny_config, strategy, extent):
    """With the scene context constant, frame boxes + ``frame_extent`` give the logits of the
    boxes placed on the canvas by hand (a full-canvas frame), and differ from the frame boxes
    read as canvas boxes."""
    forward, batch = _setup(tiny_config, strategy, "scene", extent)
    by_hand = {k: v for k, v in batch.items() if k != "frame_extent"}
    by_hand["boxes"] = _on_canvas(batch["boxes"], extent)
    got = forward(batch)
    np.testing.assert_allclose(got, forward(by_hand), atol=1e-5)
    raw = {k: v for k, v in batch.items() if k != "frame_extent"}
    assert np.abs(got - forward(raw)).max() > 1e-4


@pytest.mark.parametrize("extent", EXTENTS.values(), ids=EXTENTS.keys())
@pytest.mark.parametrize("strategy", ROI_STRATEGIES)
def test_scene_rois_stay_in_the_scene_frame(tiny_config, strategy, extent):
    """With the video context constant, only the scene's RoIs matter: they are the frame boxes
    whatever the frame's place on the video canvas (the scene frames are whole frames)."""
    forward, batch = _setup(tiny_config, strategy, "video", extent)
    got = forward(batch)
    full = dict(batch, frame_extent=np.tile(np.float32([0, 0, 1, 1]), (2, 1)))
    np.testing.assert_allclose(got, forward(full), atol=1e-5)
    on_canvas = dict(full, boxes=_on_canvas(batch["boxes"], extent))
    assert np.abs(got - forward(on_canvas)).max() > 1e-4
