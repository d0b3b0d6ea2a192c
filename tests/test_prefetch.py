"""A cold image archive is decoded by a child while the parent imports torch; the parent reads its cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from alexnet.config import DataConfig
from alexnet.data import archive
from alexnet.data.prefetch import cache_warming
from alexnet.data.sources import load_splits
from conftest import write_class_folder
from test_archive import pack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child is forked on Linux only")


def test_the_child_builds_the_cache_the_run_then_reads(tmp_path, monkeypatch):
    tar_path = pack(write_class_folder(tmp_path / "train", 6), tmp_path / "images.tar.gz")
    cfg = DataConfig(source=str(tar_path), cache_dir=str(tmp_path / "cache"))
    with cache_warming(cfg) as warming:
        assert warming
    assert len(list((tmp_path / "cache" / "archives").glob("*.npz"))) == 1

    def no_reading(*args):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(archive, "read_members", no_reading)
    splits = load_splits(cfg.source, 0.0, 0, cfg.cache_dir)
    expected = load_splits(str(tmp_path / "train"), 0.0, 0, str(tmp_path / "cache2"))
    assert (splits.train.images == expected.train.images).all()
    with cache_warming(cfg) as warming:  # warm: nothing to do
        assert not warming


def test_no_child_for_folders_streamed_data_or_the_cifar_download(tmp_path):
    tar_path = pack(write_class_folder(tmp_path / "train", 2), tmp_path / "images.tar.gz")
    for cfg in (DataConfig(source=str(tmp_path / "train")), DataConfig(source="cifar10"),
                DataConfig(source=str(tar_path), loader="stream", cache_dir=str(tmp_path / "c"))):
        with cache_warming(cfg) as warming:
            assert not warming


def test_a_damaged_archive_leaves_the_error_to_the_parent(tmp_path, capfd):
    bad = tmp_path / "images.tar.gz"
    bad.write_bytes(pack(write_class_folder(tmp_path / "train", 3), tmp_path / "x.tar.gz").read_bytes()[:200])
    with cache_warming(DataConfig(source=str(bad), cache_dir=str(tmp_path / "cache"))):
        pass
    assert capfd.readouterr().err == ""  # the child says nothing
    assert not list(tmp_path.glob("cache/archives/*"))
    result = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data", str(bad), "--epochs", "1",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            env={"ALEXNET_DATA": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_child_runs_without_torch(tmp_path):
    tar_path = pack(write_class_folder(tmp_path / "train", 2), tmp_path / "images.tar.gz")
    code = textwrap.dedent(f"""
        import sys
        from alexnet.config import DataConfig
        from alexnet.data.prefetch import cache_warming
        with cache_warming(DataConfig(source={str(tar_path)!r}, cache_dir={str(tmp_path / "cache")!r})) as on:
            assert on
        assert "torch" not in sys.modules, "reading a data source imported torch"
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert list(tmp_path.glob("cache/archives/*.npz"))


def test_a_cache_that_cannot_be_written_is_reported_once_by_the_parent(tmp_path, capfd):
    tar_path = pack(write_class_folder(tmp_path / "train", 2), tmp_path / "images.tar.gz")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache root is a file: nothing can be written under it
    with cache_warming(DataConfig(source=str(tar_path), cache_dir=str(blocked))) as warming:
        assert warming
    assert capfd.readouterr().err == ""  # the child said nothing
    with pytest.warns(UserWarning, match="could not cache") as caught:
        load_splits(str(tar_path), 0.0, 0, str(blocked))  # the parent's own read decodes and says it
    assert len(caught) == 1


def test_no_child_under_torchrun(tmp_path, monkeypatch):
    tar_path = pack(write_class_folder(tmp_path / "train", 2), tmp_path / "images.tar.gz")
    monkeypatch.setenv("WORLD_SIZE", "2")  # every rank would decode: the ranks' own reads share the cache
    with cache_warming(DataConfig(source=str(tar_path), cache_dir=str(tmp_path / "cache"))) as warming:
        assert not warming
