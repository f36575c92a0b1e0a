"""JoVALE on AVA v2.2 with the VideoMAE v2 ViT-B backbone (the paper's main row).

Variants: `blip288`, `blip192` (JoVALE@288 / @192 of Table 3: BLIP sees smaller frames).

    python launch.py train --config configs/ava_vitb16.py --workdir runs/ava \
        --init_from runs/pretrained --config.data.data_dir=/data/ava_tfds
    python launch.py flops --config configs/ava_vitb16.py:blip192
"""

from jovale_jax.configs import common

VARIANTS = {"": 384, "blip384": 384, "blip288": 288, "blip192": 192}


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/ava_vitb16.py: unknown variant {variant!r}; "
            f"expected one of {sorted(VARIANTS)}"
        )
    c = common.base_config()
    c.dataset = "ava"
    c.model.scene.image_size = VARIANTS[variant]
    return c
