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


def tiny_detr(path, channels: int = 8) -> str:
    """A random DETR (ResNet backbone of `channels` output channels, one layer each, no timm, no
    download) whose class head favours 'person', saved with its image processor at ``path``."""
    import transformers

    backbone = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, channels],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    labels = {0: "N/A", 1: "person", 2: "car"}
    model = transformers.DetrForObjectDetection(
        transformers.DetrConfig(
            use_timm_backbone=False,
            backbone_config=backbone,
            use_pretrained_backbone=False,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=16,
            decoder_ffn_dim=16,
            num_queries=10,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    )
    bias = model.class_labels_classifier.bias.data
    bias[:] = -4.0
    bias[1] = 4.0
    model.save_pretrained(str(path))
    processor = transformers.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor.save_pretrained(str(path))
    return str(path)
