"""JoVALE on JHMDB51-21 (visual + scene; split 1 by default, `--config.data.split_index=2|3`).

Default backbone SlowFast-R101 (K700), as Table 2 (91.0 frame mAP in the paper); variant `vitb`
keeps the VideoMAE v2 ViT-B. Supplementary Table 3: batch 32, 3 epochs, decay at epoch 1, short
side 256.

    python launch.py build-data --dataset jhmdb21 --raw_dir /data/jhmdb --data_dir /data/jhmdb_tfds
    python launch.py train --config configs/jhmdb21.py --workdir runs/jhmdb \
        --config.data.data_dir=/data/jhmdb_tfds --init_from runs/pretrained_sf101
"""

from jovale_jax.configs import common


def get_config(variant: str = ""):
    c = common.video_scene_preset("jhmdb21", variant)
    c.model.num_classes = 21
    c.data.fps = 30.0
    # Supplementary Table 3: short side 256; 320 x 240 frames are then 341 x 256.
    c.data.short_side = c.data.eval_short_side = 256
    c.model.video.image_size = (256, 352)
    c.data.split_index = 1
    return c
