"""JoVALE on AVA v2.2 with SlowFast-R50 (K400): the base of the paper's ablations (Tables 4-7).

Supplementary Table 3: batch 8, 6 epochs, lr x0.1 at epoch 5, short side 256; 32 x 2 input.

    python launch.py convert --config configs/ava_sf_r50.py \
        --from pyslowfast --src weights/SLOWFAST_8x8_R50.pyth --out runs/pretrained_sf50
    python launch.py train --config configs/ava_sf_r50.py --workdir runs/ava_sf50 \
        --init_from runs/pretrained_sf50 --config.data.data_dir=/data/ava_tfds
"""

from jovale_jax.configs import common


def get_config(variant: str = ""):
    if variant:
        raise ValueError(
            f"configs/ava_sf_r50.py: unknown variant {variant!r}; this preset has none"
        )
    c = common.use_slowfast(common.base_config(), depth=50)
    c.dataset = "ava"
    c.batch_size = 8
    c.num_epochs = 6
    c.decay_epochs = (5,)
    return c
