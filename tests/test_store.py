"""Artifact store: atomic writes, safe paths, safetensors round trip with metadata."""

import os
import stat

import pytest
import torch

from traitflow.errors import TraitflowError
from traitflow.store import ArtifactStore, atomic_write_bytes, open_store


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"complete")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)  # the rename is the step a crash or full disk interrupts
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_tensors_round_trip_with_metadata(tmp_path):
    store = ArtifactStore(tmp_path)
    path = store.path("exp", "vectors", ("toy", "optimism", "chat"), "vectors.safetensors")
    tensors = {"vector/prompt[-1]/residual/probe": torch.randn(3, 8)}
    store.write_tensors(path, tensors, {"layers": [0, 1, 2], "component": "residual", "note": "plain text"})
    loaded, meta = store.read_tensors(path)
    assert torch.equal(loaded["vector/prompt[-1]/residual/probe"], tensors["vector/prompt[-1]/residual/probe"])
    assert meta == {"layers": [0, 1, 2], "component": "residual", "note": "plain text"}
    assert path == tmp_path / "exp" / "vectors" / "toy" / "optimism" / "chat" / "vectors.safetensors"


@pytest.mark.parametrize("part", ["..", "/abs", ""])
def test_unsafe_partition_parts_are_refused(tmp_path, part):
    with pytest.raises(TraitflowError):
        ArtifactStore(tmp_path).path("exp", "vectors", (part,), "f.json")


def test_missing_artifact_is_a_user_error(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(TraitflowError, match="materialize its upstream asset first"):
        store.read_json(store.path("exp", "responses", ("t", "v"), "responses.json"))


def test_open_store_relative_to_root_and_unknown_schemes(tmp_path):
    assert open_store("./out", tmp_path).root == tmp_path / "out"
    s3 = open_store("s3://bucket/some/prefix/", tmp_path)  # opening asks the bucket nothing yet
    assert s3.uri == "s3://bucket/some/prefix" and s3.root == tmp_path / ".traitflow/s3/bucket/some/prefix"
    with pytest.raises(TraitflowError, match="must not contain empty"):
        open_store("s3://bucket/a//b", tmp_path)
    with pytest.raises(TraitflowError, match="expected a local folder"):
        open_store("gs://bucket", tmp_path)
