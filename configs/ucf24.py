"""JoVALE on UCF101-24 (visual + scene, as in the paper: most clips have no audio).

Default backbone SlowFast-R101 (K700), as Table 2 (84.9 frame mAP in the paper); variant `vitb`
keeps the VideoMAE v2 ViT-B. Supplementary Table 3: batch 32, 3 epochs, decay at epoch 1, short
side 224 for training (`data.short_side`) and 256 for testing (`data.eval_short_side`).

    python launch.py build-data --dataset ucf24 --raw_dir /data/ucf24 --data_dir /data/ucf24_tfds
    python launch.py train --config configs/ucf24.py --workdir runs/ucf24 \
        --config.data.data_dir=/data/ucf24_tfds --init_from runs/pretrained_sf101
    python launch.py flops --config configs/ucf24.py:vitb
"""

from jovale_jax.configs import common


def get_config(variant: str = ""):
    c = common.video_scene_preset("ucf24", variant)
    c.model.num_classes = 24
    c.data.fps = 25.0
    # Supplementary Table 3: short side 224 to train, 256 to test; 320 x 240 frames at 256 are
    # 341 x 256, hence the canvas (training frames, 299 x 224, are padded).
    c.data.short_side, c.data.eval_short_side = 224, 256
    c.model.video.image_size = (256, 352)
    return c
