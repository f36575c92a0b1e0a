"""Fields shared by every preset: model sizes, data pipeline, optimisation, sharding.

A preset (``configs/<name>.py``) calls :func:`base_config` and overrides what differs. Every shape
the model sees comes from ``config.model``; the input pipeline reads the same fields, so the data
and the model can never disagree about a shape.

Run a preset with ``python launch.py train --config configs/NAME.py[:variant] --workdir W``;
override any field with ``--config.field=value`` (unknown fields are an error).
"""

import ml_collections

# Mesh axes and the rules that map the model's logical axis names onto them (SPEC.md section 2).
# 'embed' is replicated unless `fsdp` is set, in which case it is sharded over 'data'. 'batch'
# names the activations' batch axis (constrained at every layer boundary).
SHARDING_RULES = (
    ("batch", "data"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("kv", None),
    ("classes", None),
    ("conv_in", None),
)


def use_slowfast(c: ml_collections.ConfigDict, depth: int) -> ml_collections.ConfigDict:
    """Switch a preset's video stream to SlowFast-R``depth``, the paper's 3D-CNN rows: 32 x 2
    input, short side 256 (supplementary Table 3) on a 256 x 464 canvas (a 16:9 frame at
    short side 256 is 455 x 256); alpha 4 (the Slow pathway sees 8 frames, as every checkpoint
    below was trained), its map averaged in time to the paper's T_v = 4.

    R50 takes the K400 weights of PySlowFast / ACAR-Net (PySlowFast's SLOWFAST_8x8_R50.yaml and
    ACAR-Net's SLOWFAST_R50 config: alpha 4, fusion kernel 7 with BatchNorm + ReLU, Slow frames by
    linspace: PySlowFast's ``pack_pathway_output``, ACAR-Net's ``slow_full_span``; frames
    normalised by 0.45 / 0.225), R101 ACAR-Net's K700 weights (its SLOWFAST_R101 config: alpha 4,
    fusion kernel 5, convolution only, Slow frames ``x[:, :, ::alpha]``; ACAR-Net's statistics of
    its K700 training: mean 110.6, 103.2, 96.3 / 255, std 38.8, 37.9, 40.0 / 255).
    """
    v = c.model.video
    v.backbone = "slowfast"
    v.slowfast = slowfast_config(depth=depth)
    v.pixel_mean, v.pixel_std = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
    if depth == 101:
        v.slowfast.update(fusion_kernel=5, fusion_bn_relu=False, slow_sampling="stride")
        v.pixel_mean = tuple(x / 255 for x in (110.63666788, 103.16065604, 96.29023126))
        v.pixel_std = tuple(x / 255 for x in (38.7568578, 37.88248729, 40.02898126))
    v.num_frames = 32
    v.image_size = (256, 464)  # (H, W); the 1/16 map is 16 x 29
    c.data.frame_stride = 2
    c.data.short_side = c.data.eval_short_side = 256
    return c


def video_scene_preset(name: str, variant: str) -> ml_collections.ConfigDict:
    """UCF101-24 / JHMDB51-21 (``name``): video + scene as in Table 2, supplementary Table 3's
    batch 32, 3 epochs, decay at epoch 1; SlowFast-R101 by default (variant ``sf_r101``), ViT-B
    for variant ``vitb`` (short side 224)."""
    variants = ("", "sf_r101", "vitb")
    if variant not in variants:
        raise ValueError(
            f"configs/{name}.py: unknown variant {variant!r}; expected one of {variants}"
        )
    c = base_config()
    if variant == "vitb":
        c.data.short_side = c.data.eval_short_side = 224
    else:
        use_slowfast(c, depth=101)
    c.dataset = name
    c.model.modalities = ("video", "scene")
    c.data.eval_split = "test"
    c.batch_size = 32
    c.num_epochs = 3
    c.decay_epochs = (1,)
    return c


def vit_config(
    *, width: int, depth: int, num_heads: int, mlp_dim: int, patch: int
) -> ml_collections.ConfigDict:
    """Sizes of a plain ViT encoder (shared by the video and the scene stream)."""
    return ml_collections.ConfigDict(
        {"width": width, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim, "patch": patch}
    )


def slowfast_config(*, depth: int) -> ml_collections.ConfigDict:
    """SlowFast sizes (``model.video.slowfast``), detection variant: res5 stride 1, dilation 2."""
    s = ml_collections.ConfigDict()
    s.depth = depth  # 50 (3, 4, 6, 3 blocks) | 101 (3, 4, 23, 3)
    s.stage_blocks = ()  # blocks of res2..res5 overriding depth (tiny test models); () = depth
    s.alpha = 4  # frame-rate ratio: the Slow pathway sees num_frames / alpha frames
    s.time_steps = 4  # T_v: the Slow and Fast maps are averaged in time to this many steps
    s.beta_inv = 8  # the Fast pathway has 1 / beta_inv of the Slow pathway's channels
    s.width = 64  # channels of the Slow stem; stage outputs 4, 8, 16, 32 x width
    s.fusion_kernel = 7  # temporal kernel of the Fast -> Slow lateral convolutions
    s.fusion_channel_ratio = 2  # lateral output channels = ratio x Fast channels
    s.fusion_bn_relu = True  # lateral conv followed by BatchNorm + ReLU (False: conv only)
    s.slow_temporal_kernels = (1, 1, 1, 3, 3)  # stem, res2..res5 of the Slow pathway
    s.fast_temporal_kernels = (5, 3, 3, 3, 3)  # stem, res2..res5 of the Fast pathway
    s.temporal_kernel_blocks = ()  # per stage, blocks with the temporal kernel; () = all
    s.res5_stride = 1  # 1 and dilation 2: the detection res5 (maps at 1/16)
    s.res5_dilation = 2
    s.bn_eps = 1e-5
    s.freeze_bn_affine = False  # BatchNorm statistics are always frozen; this freezes scale/bias
    s.slow_sampling = "linspace"  # Slow frames: linspace (PySlowFast) | stride (every alpha-th)
    return s


def base_config() -> ml_collections.ConfigDict:
    """The AVA ViT-B model of the paper (SPEC.md section 1) with the paper's training settings."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "ava"

    # ---------------- model ----------------
    m = c.model = ml_collections.ConfigDict()
    m.modalities = ("video", "audio", "scene")
    m.num_classes = 60
    m.num_proposals = 15  # K
    m.embed_dim = 256  # D
    # Compute dtype: float32 | bfloat16 | auto (bfloat16 on a GPU, float32 elsewhere); parameters
    # stay float32.
    m.dtype = "auto"
    # Rematerialisation of each scanned ViT block and AMFN layer in the backward pass:
    # none | full (keep only layer inputs) | dots_saveable | dots_with_no_batch_dims_saveable.
    m.remat_policy = "none"
    # Attention kernel: xla | cudnn (fused, NVIDIA GPU, bfloat16/float16; opt-in, not yet run
    # through on a GPU: bench/README.md section 12) | auto (xla for now).
    m.attention_impl = "auto"

    v = m.video = vit_config(width=768, depth=12, num_heads=12, mlp_dim=3072, patch=16)
    v.num_frames = 16
    v.tubelet = 2
    # (H, W) canvas: a 16:9 frame at short side 224 (data.short_side) is 224 x 398, padded to 400;
    # other aspect ratios keep theirs and are padded (README "Decisions"). The paper's FLOPs
    # (Table 3: 495 G) match a 224 x 288 canvas (`--config.model.video.image_size="(224, 288)"`).
    v.image_size = (224, 400)
    v.layer_norm_eps = 1e-6
    v.drop_path = 0.0  # stochastic depth of the last block (linear from 0 over the blocks)
    v.backbone = "vit"  # vit (VideoMAE v2 ViT-B) | slowfast (the `slowfast` section below)
    v.slowfast = slowfast_config(depth=50)

    s = m.scene = vit_config(width=768, depth=12, num_heads=12, mlp_dim=3072, patch=16)
    s.num_frames = 4  # T_s
    s.image_size = 384
    s.layer_norm_eps = 1e-5
    # Scene image encoder (supplementary Table 4): blip_captioner (the paper) | blip (the BLIP
    # image-text retrieval model's) | clip (CLIP ViT-B/16's vision tower).
    s.encoder = "blip_captioner"
    s.frozen = True  # BLIP's image encoder gets no gradient and no optimizer state

    a = m.audio = ml_collections.ConfigDict()
    # AST's Kaldi fbank (jovale_jax/audio_features.py): a 2.13 s window gives 211 frames, padded
    # to 214 (neutral value); the 20 x 12 patch grid covers frames 0-205 either way.
    a.num_frames = 214
    a.num_mel_bins = 128
    a.window_type = "hanning"  # AST's code and weights; the paper's text says Hamming ("hamming")
    a.patch = 16
    a.time_stride = 10  # AST's tstride and fstride (the paper: 10 / 10)
    a.freq_stride = 10
    a.width = 768  # AST's patch-embedding width, so AST weights import

    r = m.actor = ml_collections.ConfigDict()
    r.roi_size = 7
    r.sampling_ratio = 2  # bilinear samples per RoI bin side (RoIAlign, aligned=True)
    r.detector_feature_dim = 0  # F: the width of the detector's features (query_source detector)
    # Where the action queries come from (models/jovale.py): "backbone" (RoIAlign on the video
    # map; without video the scene grid, audio alone box coordinates) or "detector" (the paper:
    # per-box features of `detect.detector`'s backbone, stored by build-data; every modality's).
    m.query_source = "backbone"

    f = m.amfn = ml_collections.ConfigDict()
    f.num_layers = 6  # L
    f.num_heads = 8
    f.mlp_dim = 1024
    f.bottleneck_dim = 48  # MFA's MLP 3D -> 48 -> 3D
    f.dropout = 0.1
    f.fusion = "gated"  # gated (the paper) | uniform | late  (Table 7)
    # Spatio-temporal encoder of each AMFN layer (Table 6): mfe (the paper) | joint | factorized
    # | divided | cross_frame; `factorized` runs num_layers - temporal_layers spatial layers, then
    # temporal_layers temporal ones (ViViT model 2).
    f.encoder = "mfe"
    f.temporal_layers = 1
    # The paper's MFE layer is "SA, two norms, FFN" without saying where the norms sit. Pre-norm:
    # with post-norm our synthetic runs stayed at the class-prior loss at lr 1e-3 (README).
    f.norm_first = True
    m.head_dropout = 0.2
    # Fusion of the streams before the head (Table 5): amfn (the paper) | roi_feature_fusion |
    # roi_relation | global_relation (jovale_jax/models/fusion.py; the model's `fusion` module).
    m.fusion_strategy = "amfn"
    # The transformer layers of Table 5's roi_relation and global_relation strategies: the AMFN's
    # MFE layer sizes by default (the paper compares the strategies at the AMFN's size).
    r = m.relation = ml_collections.ConfigDict()
    r.num_layers = f.num_layers
    r.num_heads = f.num_heads
    r.mlp_dim = f.mlp_dim
    r.dropout = f.dropout
    r.norm_first = f.norm_first

    # ---------------- data ----------------
    d = c.data = ml_collections.ConfigDict()
    d.data_dir = "runs/data"
    # Your own dataset in a built-in raw layout (data/README.md): `config.dataset` names it,
    # `layout` is the builder that reads it ("ava"), `raw_dir` its raw folder, `label_map` the
    # label-map file there ("": the layout's), `class_groups` the groups its reports average, as
    # ((name, (label-map ids...)), ...). `raw_dir` is also build-data's default --raw_dir.
    d.layout = ""
    d.raw_dir = ""
    d.label_map = ""
    d.class_groups = ()
    d.frame_stride = 4  # 16 frames x stride 4 = the 64-frame window around the keyframe
    # Video frames are resized by their short side (supplementary Table 3), aspect kept, and fitted
    # to the model.video.image_size canvas (shrunk further only if they do not fit, then padded).
    d.short_side = 224  # training
    d.eval_short_side = 224  # evaluation and detection
    d.fps = 30.0
    d.audio_sample_rate = 16000
    d.flip_prob = 0.5
    # SpecAugment as AST's AudioSet recipe (freqm 48 of 128 bins, timem 192 of 1024 frames), the
    # time mask scaled to our frames: round(192 * 214 / 1024) = 40.
    d.spec_freq_mask = 48
    d.spec_time_mask = 40
    d.shuffle_buffer = 512
    d.num_parallel_calls = 2
    d.prefetch = 2
    d.train_split = "train"
    d.eval_split = "val"
    # Label assignment cost weights (supplementary eqs. 1-4).
    d.match_cost_class = 1.0
    d.match_cost_l1 = 5.0
    d.match_cost_giou = 2.0
    # Hungarian pairs below this IoU are dropped. 0 (the paper: supplementary eqs. 2-4, pure
    # Hungarian matching) keeps every pair; 0.5 is ACAR / SlowFast's floor (a missed actor is no
    # positive on a wrong box), an option (README, "Decisions").
    d.match_iou_threshold = 0.0

    # ---------------- optimisation ----------------
    c.batch_size = 16
    c.num_epochs = 8
    c.num_train_steps = -1  # -1: from num_epochs and the split size
    c.decay_epochs = (7,)  # lr x decay_factor at these epochs
    c.decay_factor = 0.1
    c.warmup_steps = 0
    c.lr = 1e-4
    # (regex over the '/'-joined parameter path, multiplier of lr / weight_decay); first match wins
    # (big_vision's lr_mults / wd_mults). The video backbone trains at 1e-5 (supp. Table 3).
    c.lr_mults = (("video_encoder/.*", 0.1),)
    c.weight_decay = 1e-4
    c.wd_mults = ()
    c.b1 = 0.9
    c.b2 = 0.999
    c.grad_clip_norm = 0.0  # 0: no clipping
    c.focal_alpha = 0.25
    c.focal_gamma = 2.0

    # ---------------- loop, checkpoints, logging ----------------
    c.log_every_steps = 50
    # Batches already on the devices while a step runs (big_vision's n_prefetch); 0: synchronous.
    c.device_prefetch = 2
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_steps = 5000
    c.eval_batch_size = 16
    c.max_dets_per_frame = 50  # the official AVA evaluator keeps the 50 top rows per frame

    # ---------------- ablation tables (launch.py ablate; jovale_jax/ablate.py) ----------------
    c.ablate = ml_collections.ConfigDict()
    c.ablate.table = ""  # which of the paper's tables: 4 | 5 | 6 | 7 | scene (ablate needs one)

    # ---------------- detection (launch.py detect; eval uses data.eval_split) ----------------
    t = c.detect = ml_collections.ConfigDict()
    t.keyframe_every = 1.0  # seconds between keyframes, from the first frame
    t.detector = ""  # a transformers object-detection model (hub id or folder); "": no detector
    t.detector_threshold = 0.5  # the detector's minimum person score
    t.batch_size = 0  # keyframes per forward pass; 0: eval_batch_size, at most the keyframes

    # ---------------- benches (launch.py bench; bench/README.md) ----------------
    # bench step / forward / memory / remat / profile time config.batch_size clips per step.
    b = c.bench = ml_collections.ConfigDict()
    b.component = "model"  # bench step / forward / profile: model | amfn (the AMFN + heads alone)
    b.input_batches = 20  # bench input: batches to time
    # bench input / loop: generate and build the tiny AVA-geometry fixture into --data_dir
    # (default runs/data/ava_fixture) and time that
    b.fixture = False
    # bench input: one GPU's training rate in clips/s; 0: an H100/H200 at 40% bf16 MFU on the
    # config's model
    b.gpu_clips_per_s = 0.0
    b.rounds = 3  # alternating timed rounds; the best of each side is kept
    b.loop_steps = 20  # bench loop: steps per round
    # bench peers: which pairs run (slowfast50, slowfast101, videomae, blip, input, evaluator),
    # the clips per call, and the geometry: () keeps the preset's (SlowFast 32 x 256 x 464, ViT-B
    # 16 x 224 x 224, BLIP 384); smaller values state a reduced CPU geometry.
    b.peers = ("slowfast50", "slowfast101", "videomae", "blip", "input", "evaluator")
    b.batch_size = 1
    b.slowfast_input = ()  # (frames, H, W) of the Fast pathway's clip
    b.vit_input = ()  # (frames, H, W) of the ViT-B video encoder's clip
    b.vit_depth = 0  # ViT-B and BLIP blocks; 0: the full 12
    b.blip_size = 384
    b.torch_compile = True  # also time the torch peers under torch.compile
    b.input_clips = 8  # bench peers input: clips read by each loader
    b.input_dir = ""  # bench peers input: the AVA fixture's folder ("": runs/data/ava_fixture)
    b.eval_frames = 300  # bench peers evaluator: keyframes of the AVA-val-like files
    b.activitynet_dir = ""  # bench peers evaluator: ActivityNet's Evaluation folder (checkout)

    # ---------------- several processes (launch.py --num_processes, a cluster) ----------------
    d = c.distributed = ml_collections.ConfigDict()
    # A process that sends no heartbeat for this long is taken as dead: the others stop with one
    # line naming it after about half of it (jovale_jax/distributed.py). JAX's default; long
    # enough for a busy host (heartbeats come from their own thread), short for a lost node.
    d.heartbeat_timeout_s = 100

    # ---------------- sharding ----------------
    c.mesh_shape = (-1, 1)  # ('data', 'model'); -1 fills the rest
    c.fsdp = False
    c.sharding_rules = SHARDING_RULES
    return c
