"""JoVALE on UCF101-24 (visual + scene, as in the paper: most clips have no audio).

Default backbone SlowFast-R101 (K700), as Table 2 (84.9 frame mAP in the paper); variant `vitb`
keeps the VideoMAE v2 ViT-B. Supplementary Table 3: batch 32, 3 epochs, decay at epoch 1, short
side 224 for training and 256 for testing (`data.short_side` is the test side).

    python launch.py build-data --dataset ucf24 --raw_dir /data/ucf24 --data_dir /data/ucf24_tfds
    python launch.py train --config configs/ucf24.py --workdir runs/ucf24 \
        --config.data.data_dir=/data/ucf24_tfds --init_from runs/pretrained_sf101
    python launch.py flops --config configs/ucf24.py:vitb
"""

from configs import common

VARIANTS = ("", "sf_r101", "vitb")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"configs/ucf24.py: unknown variant {variant!r}; "
                         f"expected one of {VARIANTS}")
    c = common.base_config()
    if variant != "vitb":
        common.use_slowfast(c, depth=101)
    else:
        c.data.short_side = 224
    c.dataset = "ucf24"
    c.model.modalities = ("video", "scene")
    c.model.num_classes = 24
    c.data.fps = 25.0
    c.data.eval_split = "test"
    c.batch_size = 32
    c.num_epochs = 3
    c.decay_epochs = (1,)
    return c
