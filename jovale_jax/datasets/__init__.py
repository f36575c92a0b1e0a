"""Dataset builders (TFDS) for AVA v2.2, UCF101-24, JHMDB51-21 and the synthetic set, and how to
read what they wrote. One example is one annotated keyframe (data/SCHEMA.md). Your own set in one
of these raw layouts needs only a preset (`config.data.layout`, data/README.md).

Build (what `launch.py build-data` calls)::

    summary = build_dataset("ava", config=config, raw_dir="/data/ava", data_dir="/data/ava_tfds")

Read (what the input pipeline and the evaluator call)::

    builder = get_builder(config)                 # raises FileNotFoundError until built
    ds = builder.as_dataset(split="train", read_config=tfds.ReadConfig(...), shuffle_files=True)
    n = builder.info.splits["train"].num_examples
    ds, n = load_split(config, "val")             # the same, unshuffled
    eval_dir(config)                              # label_map.pbtxt, {split}_groundtruth.csv, ...

The features are data/SCHEMA.md's (`proposal_features` only when the config's
`model.query_source` is "detector": computed by `config.detect.detector` when it names one
(`jovale_jax.datasets.detector_features`), else read from the proposals file). The builder is
chosen by `config.dataset` and its TFDS config by the clip geometry of `config`
(`common.clip_config`): frames, stride, fps, T_s, K, classes, detector-feature width and
detector, matching weights (and JHMDB's split). Data built for another geometry is never read by
mistake; it simply is not found. On disk,
`<data_dir>/jovale_<dataset>/<clip config>/1.0.0/` holds the TFRecord shards, TFDS's
`dataset_info.json` / `features.json` and the `eval/` folder. TFDS writes into a temporary
`incomplete.*` folder and renames it at the end, so an interrupted build is never taken for a
complete one; the next build removes such leftovers.
"""

import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from jovale_jax.datasets import common, verify
from jovale_jax.datasets.ava import AvaBuilder
from jovale_jax.datasets.synthetic import SyntheticBuilder
from jovale_jax.datasets.ucf_jhmdb import Jhmdb21Builder, Ucf24Builder

BUILDERS: dict[str, type[common.KeyframeBuilder]] = {
    "synthetic": SyntheticBuilder,
    "ava": AvaBuilder,
    "ucf24": Ucf24Builder,
    "jhmdb21": Jhmdb21Builder,
}
"""The datasets by name (`config.dataset`). Each builder class holds its dataset's facts: its
`METRIC`, `CLASS_GROUPS`, fixed `CLASSES`, `RAW_FILES`, `PRESET` and `prepare_raw` hook
(`common.KeyframeBuilder`). Your own set in one of these layouts needs no entry: its config names
the layout (`config.data.layout`, data/README.md)."""

logger = logging.getLogger("jovale_jax.datasets")


def builder_class(config: Any) -> type[common.KeyframeBuilder]:
    """The builder that reads `config.dataset`: `config.data.layout`'s when set (your own set),
    else the built-in dataset's."""
    layout = config.data.get("layout") or ""
    name = layout or config.dataset
    if layout and not re.fullmatch(r"[a-z][a-z0-9_]*", config.dataset):
        raise ValueError(
            f"config.dataset {config.dataset!r}: your own set's name must be lower-case letters, "
            "digits and _ (it names its data folder)"
        )
    if name not in BUILDERS:
        what = f"config.data.layout {layout!r}" if layout else f"dataset {name!r}"
        raise ValueError(
            f"unknown {what}; expected one of {sorted(BUILDERS)}"
            + ("" if layout else " (your own set: config.data.layout, data/README.md)")
        )
    return BUILDERS[name]


def _builder(name: str, config: Any, data_dir: str | None, **kwargs: Any) -> common.KeyframeBuilder:
    if config.dataset != name:
        raise ValueError(f"config.dataset is {config.dataset!r} but the dataset is {name!r}")
    cls = builder_class(config)
    # Your own set's name starts its folder's: never shared with the layout's dataset.
    own = f"{config.dataset}_" if config.data.get("layout") else ""
    return cls(
        config=common.clip_config(config, own + cls.config_prefix(config)),
        data_dir=data_dir or config.data.data_dir,
        label_map=config.data.get("label_map") or "",
        **kwargs,
    )


def get_builder(config: Any, data_dir: str | None = None) -> common.KeyframeBuilder:
    """The prepared TFDS builder of `config.dataset` for the config's clip geometry.

    `data_dir` defaults to `config.data.data_dir`. Raises FileNotFoundError when no complete
    dataset for this config is there, `verify.BadShardError` when a shard is not the size the
    build wrote.
    """
    builder = _builder(config.dataset, config, data_dir)
    if not builder.is_prepared():
        spec = builder.builder_config
        features = (
            f" with proposal_features ({spec.feature_dim} per box, from "
            f"{spec.detector or 'the proposals file'}: model.query_source 'detector')"
            if spec.feature_dim
            else ""
        )
        raise FileNotFoundError(
            f"no complete {config.dataset} dataset{features} for this config at "
            f"{builder.data_path}: "
            f"build it with `python launch.py build-data --dataset {config.dataset} "
            f"--config <this config> --data_dir {data_dir or config.data.data_dir}`"
        )
    verify.quick_check(os.fspath(builder.data_dir))  # a truncated shard: found before any read
    return builder


def check_dataset(config: Any, data_dir: str | None = None) -> dict[str, Any]:
    """``launch.py check-data``: every record of the built dataset read and compared with its
    metadata (``verify.check_data``)."""
    builder = get_builder(config, data_dir)
    lengths = {name: list(info.shard_lengths) for name, info in builder.info.splits.items()}
    report = verify.check_data(os.fspath(builder.data_dir), lengths)
    return {"data_path": os.fspath(builder.data_dir), **report}


def load_split(config: Any, split: str, data_dir: str | None = None) -> tuple[tf.data.Dataset, int]:
    """(decoded examples of `split` in file order, number of examples)."""
    builder = get_builder(config, data_dir)
    if split not in builder.info.splits:
        raise ValueError(
            f"{builder.data_dir} has splits {list(builder.info.splits)}, not {split!r}"
        )
    return builder.as_dataset(split=split), builder.info.splits[split].num_examples


def eval_dir(config: Any, data_dir: str | None = None) -> str:
    """The built dataset's `eval/` folder (label map, ground-truth and excluded-timestamp CSVs)."""
    return os.path.join(get_builder(config, data_dir).data_dir, "eval")


def metric(config: Any) -> str:
    """The evaluation protocol of the config's dataset: "ava" | "frame_map" (its builder's)."""
    return builder_class(config).METRIC


def class_groups(config: Any) -> dict[str, list[int]]:
    """The class groups the reports average ({group: label-map ids}): your own set's
    `config.data.class_groups`, else the builder's (AVA's pose / object / interaction, the
    synthetic set's motion / sound / scene; none for UCF101-24 and JHMDB51-21)."""
    groups = dict(config.data.class_groups) if config.data.get("layout") else None
    if groups is None:
        groups = builder_class(config).CLASS_GROUPS
    return {k: [int(i) for i in v] for k, v in groups.items()}


def label_map(config: Any) -> tuple[dict[int, str], str]:
    """({action id: name} in model-output order, where it was read): the builder's fixed
    `CLASSES`, else the built dataset's `eval/label_map.pbtxt` (FileNotFoundError until built)."""
    from jovale_jax.evaluation.ava import read_labelmap

    cls = builder_class(config)
    if cls.CLASSES is not None and not config.data.get("layout"):
        return dict(cls.CLASSES), f"{cls.__module__}.{cls.__name__}.CLASSES"
    path = os.path.join(eval_dir(config), "label_map.pbtxt")
    return read_labelmap(path), path


def check_raw_dir(config: Any, raw_dir: str | None) -> None:
    """A one-line error unless `raw_dir` is a folder with something in it."""
    name, layout = config.dataset, config.data.get("layout") or config.dataset
    hint = f"{name} expects {builder_class(config).RAW_FILES} there (data/{layout}/README.md)"
    if raw_dir is None:
        raise ValueError(f"building {name} needs --raw_dir (or config.data.raw_dir): {hint}")
    if not os.path.isdir(raw_dir):
        raise FileNotFoundError(f"raw_dir {raw_dir}: no such folder; {hint}")
    if not os.listdir(raw_dir):
        raise FileNotFoundError(f"raw_dir {raw_dir} is empty; {hint}")


def build_dataset(
    name: str,
    *,
    config: Any,
    raw_dir: str | None,
    data_dir: str,
    strict: bool = False,
    split: str | None = None,
) -> dict[str, Any]:
    """Writes the TFRecord shards of `name` for `config` into `data_dir`; returns a summary.

    Args:
      name: synthetic | ava | ucf24 | jhmdb21, or your own set's (must equal `config.dataset`).
      config: the model config whose clip geometry the examples follow.
      raw_dir: the raw files (data/<dataset>/README.md); default `config.data.raw_dir`. The
        builder's `prepare_raw` makes it ready first when the dataset is not built yet (the
        synthetic set is generated there, default `<data_dir>/raw`).
      data_dir: where the shards go.
      strict: any video skipped or truncated is an error (nothing is written).
      split: build only this split (default: all of the dataset's splits).

    Returns: {dataset, data_path, reused, examples: {split: n}, videos_skipped, videos_truncated,
      skipped_video_ids, truncated_video_ids, keyframes_lost, rows_dropped: {reason: n},
      boxes_clipped: {gt|proposals: n}, seconds}. A dataset already built is reused, not rebuilt.
    """
    start = time.time()
    known = builder_class(config).SPLITS
    if split is not None and split not in known:
        raise ValueError(f"{name} has splits {known}, not {split!r}")
    splits = known if split is None else (split,)
    builder = _builder(name, config, data_dir, strict=strict, splits=splits)
    if builder.is_prepared():
        missing = set(splits) - set(builder.info.splits)
        if missing:
            raise ValueError(
                f"{builder.data_dir} was built without split(s) {sorted(missing)}; "
                "remove it and build again with every split you need"
            )
        logger.info("%s: reusing the dataset at %s", name, builder.data_dir)
        summary = builder.stats.summary()
        summary.update(
            reused=True,
            examples={s: builder.info.splits[s].num_examples for s in builder.info.splits},
        )
    else:
        spec = builder.builder_config
        if spec.detector:  # loaded and checked before anything is written
            from jovale_jax.datasets.detector_features import DetectorFeatures

            builder.detector = DetectorFeatures.load(spec.detector, feature_dim=spec.feature_dim)
        prefix = tfds.core.constants.INCOMPLETE_PREFIX
        for leftover in builder.data_path.parent.glob(f"{prefix}*_{builder.data_path.name}"):
            logger.warning("removing %s, left by an interrupted build", leftover)
            shutil.rmtree(leftover)
        raw_dir = type(builder).prepare_raw(raw_dir or config.data.get("raw_dir") or None, data_dir)
        check_raw_dir(config, raw_dir)
        tfds.display_progress_bar(False)  # the builders show their own (videos, examples, ETA)
        try:
            with tempfile.TemporaryDirectory() as downloads:  # TFDS wants one; nothing goes there
                builder.download_and_prepare(
                    download_dir=downloads,
                    download_config=(
                        tfds.download.DownloadConfig(manual_dir=raw_dir, try_download_gcs=False)
                    ),
                )
        finally:
            tfds.display_progress_bar(True)
        summary = builder.stats.summary()
        summary["reused"] = False
        verify.write_manifest(os.fspath(builder.data_dir), summary)  # for check-data
    summary.update(
        dataset=name, data_path=os.fspath(builder.data_dir), seconds=round(time.time() - start, 1)
    )
    logger.info("%s: %s", name, summary)
    return summary


def build_or_reuse(config: Any, data_dir: str | None) -> str:
    """Build the dataset of ``config`` in ``data_dir`` (default ``config.data.data_dir``) unless it
    is built already, and say which on the console; returns the data dir (what ``demo`` and
    ``ablate`` train on)."""
    data_dir = data_dir or config.data.data_dir
    summary = build_dataset(config.dataset, config=config, raw_dir=None, data_dir=data_dir)
    how = "reused" if summary["reused"] else f"built in {summary['seconds']:.0f} s"
    print(f"data: {summary['examples']} examples in {summary['data_path']} ({how})", flush=True)
    return data_dir
