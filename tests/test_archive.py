"""Image folders packed as .tar.gz are extracted safely once and read like folders."""

from __future__ import annotations

import io
import tarfile

import pytest

from alexnet.data.sources import load_splits
from alexnet.errors import AlexnetError
from conftest import write_class_folder


def pack(folder, tar_path):
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="train")
    return tar_path


def test_image_archive_reads_like_its_folder(tmp_path):
    folder = write_class_folder(tmp_path / "train", 6)
    tar_path = pack(folder, tmp_path / "images.tar.gz")
    from_tar = load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    from_dir = load_splits(str(folder), 0.0, 0, cache_dir=str(tmp_path / "cache2"))
    assert from_tar.classes == from_dir.classes == ["cat", "dog", "ship"]
    assert (from_tar.train.images == from_dir.train.images).all()
    again = load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))  # extracted once, reused
    assert len(list((tmp_path / "cache" / "archives").iterdir())) == 1 and len(again.train) == 18


def test_image_archive_with_parent_path_is_refused(tmp_path):
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("train/cat/ok.png"), io.BytesIO(b""))
        info = tarfile.TarInfo("../escape.png")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(AlexnetError, match="outside"):
        load_splits(str(tar_path), 0.1, 0, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "escape.png").exists()
