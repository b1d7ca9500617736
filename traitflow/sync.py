"""`traitflow sync push|pull EXPERIMENT --remote s3://bucket/prefix`: an experiment's artifacts
between its local store and a bucket.

- Only new or changed files move: same size and same content hash (blake2b, kept in each
  object's metadata as `x-amz-meta-blake2b` when pushed) means unchanged.
- `--full` also deletes what the other side no longer has (within what is synced).
- Raw activations (`activations/`, and `inference_activations/` saved by
  `inference.save_activations`: large, and re-made from the responses) stay behind unless
  `--include-activations`; so do traitflow's own local files (`.locks/`, `.dagster/`, temporary
  files, ETag markers).
- Transfers run in parallel (`--jobs`, default 8), each atomic: an object appears only once
  uploaded, a local file is written to a temporary name and renamed. An interrupted sync leaves
  every file either old or new, and the next one carries on where it stopped.
- `--dry-run` prints what would move; the summary says files, bytes and seconds either way.
- `--checksums when_required` for S3 APIs that reject boto3's default CRC checksums (older R2).

The bucket's endpoint and credentials come from the environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, …), as for s3:// storage (docs/storage.md).
"""

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from traitflow.errors import TraitflowError
from traitflow.model.fingerprint import content_hash

HASH_META = "blake2b"  # user metadata key of an object: its content hash
RAW_ACTIVATIONS = ("activations", "inference_activations")  # asset folders left behind unless --include-activations
def synced(relative: str, include_activations: bool) -> bool:
    """Whether a file (path relative to the experiment's folder) takes part in a sync."""
    parts = relative.split("/")
    if any(p.startswith(".") for p in parts):  # .locks/, .dagster/, .<file>.etag, .<file>.tmp
        return False
    return include_activations or parts[0] not in RAW_ACTIVATIONS


@dataclass
class Plan:
    """What a sync moves: files to copy (relative path -> size) and to delete."""

    copy: dict[str, int] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    unchanged: int = 0


@dataclass
class Side:
    """One end of a sync: its files, relative path -> (size, lazy content hash)."""

    files: dict[str, int]
    hash_of: Callable[[str], str | None]


def _local_side(folder: Path, include_activations: bool) -> Side:
    files = {}
    if folder.is_dir():
        for path in folder.rglob("*"):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and synced(relative, include_activations):
                files[relative] = path.stat().st_size
    return Side(files, lambda relative: content_hash(folder / relative))


def _plan(source: Side, target: Side, full: bool, jobs: int) -> Plan:
    plan = Plan()
    same_size = [r for r, size in source.files.items() if target.files.get(r) == size]
    with ThreadPoolExecutor(jobs) as pool:  # remote hashes are one HEAD each
        equal = dict(zip(same_size, pool.map(lambda r: source.hash_of(r) == target.hash_of(r), same_size), strict=True))
    for relative, size in sorted(source.files.items()):
        if equal.get(relative):
            plan.unchanged += 1
        else:
            plan.copy[relative] = size
    if full:
        plan.delete = sorted(set(target.files) - set(source.files))
    return plan


class _Progress:
    def __init__(self, total_files: int, total_bytes: int, out: TextIO):
        self.files, self.bytes, self.total_files, self.total_bytes = 0, 0, total_files, total_bytes
        self.out, self.lock, self.tty = out, threading.Lock(), bool(getattr(out, "isatty", lambda: False)())
        self.last = 0.0

    def done(self, size: int) -> None:
        with self.lock:
            self.files, self.bytes = self.files + 1, self.bytes + size
            now = time.monotonic()
            if self.tty and (now - self.last > 0.1 or self.files == self.total_files):
                self.last = now
                self.out.write(f"\r  {self.files}/{self.total_files} files, {_size(self.bytes)} of {_size(self.total_bytes)}")
                self.out.flush()

    def close(self) -> None:
        if self.tty and self.total_files:
            self.out.write("\n")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def sync(direction: Literal["push", "pull"], local_root: Path, experiment: str, remote: str, *, full: bool = False,
         dry_run: bool = False, include_activations: bool = False, jobs: int = 8, checksums: str = "when_supported",
         out: TextIO | None = None) -> "SyncResult":
    """Sync one experiment's artifacts; returns the summary line (also printed to `out`) and what is where."""
    from traitflow.store.s3 import S3ArtifactStore

    out = out or sys.stderr
    if jobs < 1:
        raise TraitflowError(f"--jobs must be at least 1, got {jobs}")
    if not remote.startswith("s3://"):
        raise TraitflowError(f"--remote {remote!r}: expected s3://bucket/prefix")
    started = time.monotonic()
    store = S3ArtifactStore(remote, local_root, checksums=checksums)  # type: ignore[arg-type]
    client = store.client  # checks the bucket: missing or unreachable is one line, before anything moves
    folder = Path(local_root) / experiment
    prefix = f"{store.prefix}/{experiment}/" if store.prefix else f"{experiment}/"
    remote_files, in_bucket = {}, set()
    pages = store._call("list the bucket", client.get_paginator("list_objects_v2").paginate, Bucket=store.bucket, Prefix=prefix)
    for page in store._call("list the bucket", list, pages):
        for entry in page.get("Contents", []):
            relative = entry["Key"][len(prefix):]
            in_bucket.add(relative)
            if relative and synced(relative, include_activations):
                remote_files[relative] = int(entry["Size"])

    def remote_hash(relative: str) -> str | None:
        head = store._call(f"read {prefix}{relative}", client.head_object, Bucket=store.bucket, Key=prefix + relative, missing_ok=True)
        return None if head is None else head.get("Metadata", {}).get(HASH_META)

    here, there = _local_side(folder, include_activations), Side(remote_files, remote_hash)
    source, target = (here, there) if direction == "push" else (there, here)
    plan = _plan(source, target, full, jobs)
    verb = {"push": "pushed", "pull": "pulled"}[direction]
    if dry_run:
        for relative, size in plan.copy.items():
            out.write(f"  would {direction} {experiment}/{relative} ({_size(size)})\n")
        for relative in plan.delete:
            out.write(f"  would delete {'s3' if direction == 'push' else 'local'} {experiment}/{relative}\n")
        verb = f"would have {verb}"
    else:
        progress = _Progress(len(plan.copy), sum(plan.copy.values()), out)

        def push(relative: str) -> None:
            path = folder / relative
            store._call(f"upload {prefix}{relative}", client.upload_file, str(path), store.bucket, prefix + relative,
                        ExtraArgs={"Metadata": {HASH_META: content_hash(path)}})
            progress.done(plan.copy[relative])

        def pull(relative: str) -> None:
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            try:
                store._call(f"download {prefix}{relative}", client.download_file, store.bucket, prefix + relative, tmp)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            progress.done(plan.copy[relative])

        try:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(push if direction == "push" else pull, plan.copy))
        finally:
            progress.close()
        for relative in plan.delete:
            if direction == "push":
                store._call(f"delete {prefix}{relative}", client.delete_object, Bucket=store.bucket, Key=prefix + relative)
            else:
                (folder / relative).unlink(missing_ok=True)
    summary = (f"{verb} {len(plan.copy)} file(s), {_size(sum(plan.copy.values()))}, in {time.monotonic() - started:.1f}s; "
               f"{plan.unchanged} unchanged" + (f"; {len(plan.delete)} deleted" if full else ""))
    out.write(summary + "\n")
    return SyncResult(summary, in_bucket, set(_local_side(folder, True).files) if not dry_run else set())


@dataclass(frozen=True)
class SyncResult:
    summary: str
    in_bucket: set[str]  # every object of the experiment in the bucket, synced or not (paths relative to its folder)
    local: set[str]  # every file of the experiment here after the sync

def local_store_root(project: Any, experiment: str, storage: str | None) -> Path:
    """The local folder an experiment's artifacts are in (its storage.uri, or --storage)."""
    from traitflow.store import experiment_store

    store = experiment_store(project.experiments[experiment].spec.storage, project.root, storage)
    if store.uri.startswith("s3://"):
        raise TraitflowError(f"sync moves artifacts between a local folder and a bucket; {experiment}'s storage is "
                             f"{store.uri} already (use --storage DIR for the local side)")
    return Path(store.root)
