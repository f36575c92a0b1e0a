"""JoVALE on AVA v2.2 with SlowFast-R101 (K700): Table 1's 3D-CNN row (35.5 mAP in the paper).

Supplementary Table 3: batch 16, 8 epochs, lr x0.1 at epoch 7, short side 256; 32 x 2 input.
Weights: ACAR-Net's ``SLOWFAST_R101_K700.pth.tar``.

    python launch.py convert --config configs/ava_sf_r101.py \
        --from acar --src weights/SLOWFAST_R101_K700.pth.tar --out runs/pretrained_sf101
    python launch.py train --config configs/ava_sf_r101.py --workdir runs/ava_sf101 \
        --init_from runs/pretrained_sf101 --config.data.data_dir=/data/ava_tfds
"""

from jovale_jax.configs import common


def get_config(variant: str = ""):
    if variant:
        raise ValueError(
            f"configs/ava_sf_r101.py: unknown variant {variant!r}; this preset has none"
        )
    c = common.use_slowfast(common.base_config(), depth=101)
    c.dataset = "ava"
    c.batch_size = 16
    c.num_epochs = 8
    c.decay_epochs = (7,)
    return c
