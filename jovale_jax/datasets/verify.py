"""Checking a built dataset's TFRecord shards against what the build wrote.

``build-data`` ends by writing ``MANIFEST`` next to the shards: each shard's record count, size
and SHA-256, and the build's summary (videos skipped or truncated). Two checks read it:

- :func:`quick_check` (``train`` runs it before building anything): every shard is there with
  the size it was written with. It only stats files, so a truncated or missing shard is found in
  milliseconds, before training.
- :func:`check_data` (``launch.py check-data``): reads every record (TFRecord's own CRC of each
  record's length and data) and compares counts with ``dataset_info.json`` and checksums with
  the manifest. A corrupted byte anywhere is named by shard and record.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

MANIFEST = "jovale_manifest.json"


class BadShardError(ValueError):
    """A shard that is missing, truncated or corrupted; the message names it (and the record)."""


def shards(data_dir: str) -> list[str]:
    """The TFRecord shard files of a built dataset folder, sorted."""
    return sorted(n for n in os.listdir(data_dir) if ".tfrecord-" in n)


def read_shard(path: str) -> tuple[int, str]:
    """(records, SHA-256 of the file) after reading every record of ``path``; a record that
    does not read is a :class:`BadShardError` naming the shard and the record (0-based)."""
    import tensorflow as tf

    records = 0
    try:
        for _ in tf.data.TFRecordDataset(path).as_numpy_iterator():
            records += 1
    except tf.errors.OpError as e:
        raise BadShardError(
            f"{path}: record {records} does not read ({e.message.strip()}); rebuild the dataset "
            f"(remove {os.path.dirname(path)} and run launch.py build-data again)"
        ) from None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return records, digest.hexdigest()


def write_manifest(data_dir: str, summary: dict[str, Any]) -> None:
    """Record each shard's records, size and checksum and the build summary (after a build)."""
    entries = {}
    for name in shards(data_dir):
        path = os.path.join(data_dir, name)
        records, sha = read_shard(path)
        entries[name] = {"records": records, "bytes": os.path.getsize(path), "sha256": sha}
    keep = ("videos_skipped", "skipped_video_ids", "videos_truncated", "keyframes_lost")
    manifest = {"shards": entries, "build": {k: summary[k] for k in keep if k in summary}}
    with open(os.path.join(data_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def _manifest(data_dir: str) -> dict[str, Any] | None:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def quick_check(data_dir: str) -> None:
    """Every shard of the manifest is there with its size (file sizes only: milliseconds)."""
    manifest = _manifest(data_dir)
    if manifest is None:  # built before manifests: check-data still reads every record
        return
    for name, facts in manifest["shards"].items():
        path = os.path.join(data_dir, name)
        size = os.path.getsize(path) if os.path.exists(path) else None
        if size != facts["bytes"]:
            found = "missing" if size is None else f"{size} bytes"
            raise BadShardError(
                f"{path}: {found}, but the build wrote {facts['bytes']} bytes (truncated or "
                f"replaced); run launch.py check-data, or rebuild the dataset"
            )


def check_data(data_dir: str, split_lengths: dict[str, list[int]]) -> dict[str, Any]:
    """Read every record of every shard; compare the counts with ``split_lengths`` (split ->
    records per shard, from dataset_info.json) and the checksums with the manifest. Returns
    {"shards", "records", "videos_skipped", "skipped_video_ids", "manifest"}; a mismatch is a
    :class:`BadShardError` naming the shard."""
    manifest = _manifest(data_dir) or {"shards": {}, "build": {}}
    quick_check(data_dir)
    names = shards(data_dir)
    total = 0
    for split, lengths in split_lengths.items():
        mine = [n for n in names if f"-{split}.tfrecord-" in n]
        if len(mine) != len(lengths):
            raise BadShardError(
                f"{data_dir}: split {split} has {len(mine)} shard files, dataset_info.json lists "
                f"{len(lengths)}"
            )
        for name, want in zip(mine, lengths):
            path = os.path.join(data_dir, name)
            records, sha = read_shard(path)
            if records != want:
                raise BadShardError(
                    f"{path}: {records} records, dataset_info.json says {want}; rebuild the dataset"
                )
            stored = manifest["shards"].get(name, {}).get("sha256")
            if stored is not None and stored != sha:
                raise BadShardError(
                    f"{path}: checksum {sha[:12]}... differs from the build's {stored[:12]}... "
                    f"(the records read, but the file changed since the build); rebuild the dataset"
                )
            total += records
    build = manifest["build"]
    return {
        "shards": len(names),
        "records": total,
        "videos_skipped": build.get("videos_skipped"),
        "skipped_video_ids": build.get("skipped_video_ids"),
        "manifest": bool(manifest["shards"]),
    }
