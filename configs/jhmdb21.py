"""JoVALE on JHMDB51-21 (visual + scene; split 1 by default, `--config.data.split_index=2|3`).

    python launch.py build-data --dataset jhmdb21 --raw_dir /data/jhmdb --data_dir /data/jhmdb_tfds
    python launch.py train --config configs/jhmdb21.py --workdir runs/jhmdb \
        --config.data.data_dir=/data/jhmdb_tfds --init_from runs/pretrained
"""

from configs import common


def get_config(variant: str = ""):
    if variant:
        raise ValueError(f"configs/jhmdb21.py: unknown variant {variant!r}; this preset has none")
    c = common.base_config()
    c.dataset = "jhmdb21"
    c.model.modalities = ("video", "scene")
    c.model.num_classes = 21
    c.data.fps = 30.0
    # Supplementary Table 3: short side 256; 320 x 240 frames are then 341 x 256.
    c.data.short_side = c.data.eval_short_side = 256
    c.model.video.image_size = (256, 352)
    c.data.split_index = 1
    c.data.eval_split = "test"
    c.batch_size = 32
    c.num_epochs = 3
    c.decay_epochs = (1,)
    return c
