"""Tiny transformers models for the conversion tests (test_convert*.py): sizes, a randomiser and
the matching synthetic `test` config. torch / transformers are imported where used."""

import numpy as np

from configs import synthetic

TOL = 1e-4
W, DEPTH, HEADS, MLP = 32, 2, 4, 64  # the tiny transformers models
VISION = {  # a BLIP / CLIP vision tower at 64 x 64 with 16 x 16 patches
    "hidden_size": W,
    "num_hidden_layers": DEPTH,
    "num_attention_heads": HEADS,
    "intermediate_size": MLP,
    "image_size": 64,
    "patch_size": 16,
}
TEXT = {  # a one-layer text tower (BLIP's also needs the special token ids: BLIP_TEXT)
    "vocab_size": 99,
    "hidden_size": W,
    "num_hidden_layers": 1,
    "num_attention_heads": HEADS,
    "intermediate_size": MLP,
    "max_position_embeddings": 32,
}
BLIP_TEXT = {**TEXT, "bos_token_id": 1, "sep_token_id": 2, "eos_token_id": 2, "pad_token_id": 0}


def randomise(model, seed: int = 0):
    """Every parameter random (LayerNorm scales around 1), eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(1.0)
    return model.eval()


def save_random(model, seed: int, path):
    """``model`` randomised with ``seed`` and saved as a transformers directory at ``path``."""
    randomise(model, seed).save_pretrained(path)
    return path


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def max_diff(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours) - theirs.detach().numpy())))


def tiny_config(**video):
    """The synthetic test preset with the streams sized like the tiny transformers models."""
    c = synthetic.get_config("test")
    sizes = {"width": W, "depth": DEPTH, "num_heads": HEADS, "mlp_dim": MLP}
    c.model.video.update(sizes, **{"num_frames": 4, "image_size": (32, 48), **video})
    c.model.scene.update(sizes, image_size=64)
    c.model.audio.update(width=W, num_frames=64, num_mel_bins=48)
    return c
