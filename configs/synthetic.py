"""A tiny JoVALE on the embedded synthetic audio-visual set: trains on a 2-core CPU in minutes.

`make demo` runs it end to end. The variant is a comma-separated set of switches (SWITCHES):
`test` shrinks the model further for the test suite; `slowfast` puts a tiny SlowFast video
backbone (one block per stage, alpha 4) in place of the tiny ViT, smaller still (8 channels, alpha
2) with `test`: `configs/synthetic.py:slowfast,test`. The older name `slowfast_test` still works.

    python launch.py build-data --dataset synthetic --data_dir runs/data/synthetic
    python launch.py train --config configs/synthetic.py --workdir runs/demo
"""

from jovale_jax.configs import common

SWITCHES = {
    "test": "a model small enough for the test suite",
    "slowfast": "a tiny SlowFast video backbone instead of the tiny ViT",
}
ALIASES = {"slowfast_test": ("slowfast", "test")}


def switches(variant: str) -> frozenset[str]:
    """The switches a variant string turns on: "" none, "a,b" both, an ALIASES name its own."""
    names = [n.strip() for n in variant.split(",") if n.strip()]
    on = {s for n in names for s in ALIASES.get(n, (n,))}
    unknown = sorted(on - set(SWITCHES))
    if unknown:
        where = f" in {variant!r}" if variant != unknown[0] else ""
        raise ValueError(
            f"configs/synthetic.py: unknown variant {unknown[0]!r}{where}; expected switches from "
            f"{tuple(SWITCHES)}, comma-separated, or one of {tuple(ALIASES)}"
        )
    return frozenset(on)


def get_config(variant: str = ""):
    on = switches(variant)
    c = common.base_config()
    c.dataset = "synthetic"
    m = c.model
    m.num_classes = 6
    m.num_proposals = 4
    m.embed_dim = 64
    m.head_dropout = 0.0
    # The 128 x 96 frames at half size (aspect kept), patches of 8 x 8 and tubelets of 4 frames
    # (half the 1 s window): a token then sees an actor (4-7 px wide here) move across it. With
    # 16 x 16 patches on a 64 x 64 canvas and tubelets of 2, the motion classes stayed at their
    # prior (README, "Decisions").
    m.video.update(
        width=64,
        depth=2,
        num_heads=2,
        mlp_dim=128,
        patch=8,
        num_frames=8,
        tubelet=4,
        image_size=(48, 64),
    )
    # The scene stream sees the keyframes at full width (128 x 96 squashed to 128 x 128, BLIP's
    # resize), so it resolves the 1 px scene cues that the video's half-size clip averages away
    # (jovale_jax/datasets/synthetic.py): the scene group needs it, as in the paper's Table 4.
    m.scene.update(
        width=64, depth=2, num_heads=2, mlp_dim=128, patch=16, num_frames=2, image_size=128
    )
    # The paper freezes BLIP because it is pretrained; this tiny scene encoder starts from random
    # weights, and frozen it cannot pick out the small striped ball (near_ball stayed at its prior:
    # README "Measured"), so the demo trains it. The `test` variants keep it frozen.
    m.scene.frozen = False
    m.audio.update(num_frames=101, num_mel_bins=64, width=64)
    m.amfn.update(num_layers=2, num_heads=4, mlp_dim=128, bottleneck_dim=16, dropout=0.0)
    m.relation.update(num_layers=2, num_heads=4, mlp_dim=128, dropout=0.0)  # Table 5: as the AMFN

    d = c.data
    d.data_dir = "runs/data/synthetic"
    d.fps = 8.0
    d.frame_stride = 1  # 8 frames at 8 fps: a 1 s window, 98 fbank frames padded to 101
    d.short_side = d.eval_short_side = 48  # 128 x 96 frames -> 64 x 48 on the 64 x 64 canvas
    d.spec_freq_mask = 24  # AST's widths scaled to 64 bins x 101 frames (configs/common.py)
    d.spec_time_mask = 19
    d.shuffle_buffer = 256
    # The IoU floor of the label assignment: 0.5, not the paper's 0, here (a small gain on this set,
    # README "Decisions"; the demo's numbers and the built test data are at 0.5).
    d.match_iou_threshold = 0.5
    d.eval_split = "val"

    c.batch_size = 8
    c.eval_batch_size = 16
    c.num_epochs = -1
    c.num_train_steps = 1200
    c.decay_epochs = ()
    c.lr = 1e-3
    c.lr_mults = ()  # one rate for every parameter
    c.warmup_steps = 20
    c.grad_clip_norm = 1.0
    c.log_every_steps = 20
    c.checkpoint_every_steps = 400
    c.eval_every_steps = 0  # the demo evaluates the final checkpoint once

    if "test" in on:
        m.video.update(
            width=32,
            depth=1,
            num_heads=2,
            mlp_dim=64,
            image_size=(32, 32),
            num_frames=4,
            patch=16,
            tubelet=2,
        )
        m.scene.update(width=32, depth=1, num_heads=2, mlp_dim=64, image_size=32, frozen=True)
        m.audio.update(width=32)
        m.embed_dim = 32
        m.amfn.update(num_layers=2, num_heads=2, mlp_dim=64, bottleneck_dim=8)
        m.relation.update(num_layers=2, num_heads=2, mlp_dim=64)
        c.data.frame_stride = 2  # 4 frames still span the 1 s window
        c.data.short_side = c.data.eval_short_side = 24  # 32 x 24 on the 32 x 32 canvas
    if "slowfast" in on:
        m.video.backbone = "slowfast"
        # T_v = num_frames / alpha: 8 / 4 (demo) or 4 / 2 (test) = 2 steps on a 3 x 4 or 2 x 2 map
        m.video.slowfast.update(
            stage_blocks=(1, 1, 1, 1), width=16, beta_inv=4, fusion_kernel=5, alpha=4, time_steps=2
        )
        if "test" in on:
            m.video.slowfast.update(width=8, alpha=2, fusion_kernel=3)
    return c
