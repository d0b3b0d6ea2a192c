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
    assert len(list((tmp_path / "cache" / "archives").iterdir())) == 1  # one decoded entry, nothing extracted


def test_warm_start_reads_the_cache_not_the_archive(tmp_path, monkeypatch):
    from alexnet.data import archive

    folder = write_class_folder(tmp_path / "train", 6)
    tar_path = pack(folder, tmp_path / "images.tar.gz")
    first = load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))

    def no_reading(*args):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(archive, "read_members", no_reading)
    again = load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    assert again.classes == first.classes and (again.train.images == first.train.images).all()
    tar_path.touch()  # a changed archive (new mtime) is decoded afresh
    with pytest.raises(AssertionError, match="read again"):
        load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))


def test_archive_with_test_split_and_hidden_members(tmp_path):
    write_class_folder(tmp_path / "data" / "train", 4)
    write_class_folder(tmp_path / "data" / "test", 2)
    (tmp_path / "data" / "train" / "cat" / ".DS_Store.png").write_bytes(b"junk")  # hidden: ignored
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "data", arcname=".")
    splits = load_splits(str(tmp_path / "d.tar.gz"), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    assert len(splits.train) == 12 and len(splits.test) == 6 and splits.classes == ["cat", "dog", "ship"]


def test_damaged_member_is_named_in_one_error(tmp_path):
    folder = write_class_folder(tmp_path / "train", 3)
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    tar_path = pack(folder, tmp_path / "images.tar.gz")
    with pytest.raises(AlexnetError, match=r"images\.tar\.gz:train/dog/broken\.png"):
        load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "archives").exists() or not any((tmp_path / "cache" / "archives").iterdir())


def test_image_archive_with_parent_path_is_refused(tmp_path):
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("train/cat/ok.png"), io.BytesIO(b""))
        info = tarfile.TarInfo("../escape.png")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(AlexnetError, match="outside"):
        load_splits(str(tar_path), 0.1, 0, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("cut", [0.5, 0.98], ids=["half", "last-bytes"])
def test_truncated_archive_is_one_error_naming_it(tmp_path, cut):
    tar_path = pack(write_class_folder(tmp_path / "train", 6), tmp_path / "images.tar.gz")
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(AlexnetError, match="images.tar.gz"):
        load_splits(str(tar_path), 0.0, 0, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz", "gz-two-members"])
def test_every_compression_reads_the_same_members(tmp_path, compression):
    import gzip

    from alexnet.data import archive

    folder = write_class_folder(tmp_path / "train", 6)
    expected = {f"train/{p.parent.name}/{p.name}": p.read_bytes() for p in folder.rglob("*.png")}
    assert len(expected) == 18
    path = tmp_path / "images.tar"
    with tarfile.open(path, "w:" + compression.split("-")[0]) as tar:
        tar.add(folder, arcname="train")
    if compression == "gz-two-members":  # what `cat a.gz b.gz` or pigz --independent give: one stream, two members
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]) + gzip.compress(raw[len(raw) // 2:]))
    assert archive.read_members(path) == expected
