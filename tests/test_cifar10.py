"""CIFAR-10: download, checksum, safe extraction and the channel-planar batch format.

The fixtures build a small archive in the real format: the real member names,
Python-2-style pickled dicts with bytes keys and (N, 3072) uint8 rows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import cifar10
from alexnet.data.cifar10 import (
    ARCHIVE,
    CLASSES,
    FOLDER,
    MEMBERS,
    default_root,
    download,
    load_cifar10,
    md5sum,
    read_batches,
    read_label_names,
    safe_extract,
)
from alexnet.errors import AlexnetError

PER_BATCH = 20


def batch_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"batch %d" % seed,
        b"labels": [int(v) for v in rng.integers(0, 10, PER_BATCH)],
        b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(PER_BATCH)],
    }
    return pickle.dumps(batch, protocol=2)  # the official files are Python 2 pickles


def meta_bytes() -> bytes:
    return pickle.dumps(
        {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072},
        protocol=2,
    )


def member_files() -> dict[str, bytes]:
    files = {f"{FOLDER}/data_batch_{i}": batch_bytes(i) for i in range(1, 6)}
    files[f"{FOLDER}/test_batch"] = batch_bytes(0)
    files[f"{FOLDER}/batches.meta"] = meta_bytes()
    files[f"{FOLDER}/readme.html"] = b"<html></html>"
    return files


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def build_tar(path: Path, files: dict[str, bytes], extra=None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            add_file(tar, name, data)
        if extra is not None:
            extra(tar)
    return path


@pytest.fixture
def fake_tar(tmp_path) -> tuple[Path, str]:
    """A fake cifar-10-python.tar.gz and its MD5."""
    source = tmp_path / "source"
    source.mkdir()
    path = build_tar(source / ARCHIVE, member_files())
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def nothing_extracted(dest: Path) -> bool:
    return not dest.exists() or list(dest.iterdir()) == []


def test_constants_match_the_official_archive():
    assert cifar10.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar10.MD5 == "c58f30108f718f92721af3b95e74349a"
    assert CLASSES[0] == "airplane" and CLASSES[-1] == "truck" and len(CLASSES) == 10
    assert f"{FOLDER}/data_batch_5" in MEMBERS and f"{FOLDER}/readme.html" in MEMBERS


def test_default_root_is_alexnet_data_or_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("ALEXNET_DATA")
    assert default_root() == Path.home() / ".cache" / "alexnet"


def test_md5sum_gives_known_digests_across_its_read_blocks(fake_tar, tmp_path):
    small = tmp_path / "abc"
    small.write_bytes(b"abc")
    assert md5sum(small) == "900150983cd24fb0d6963f7d28e17f72"  # RFC 1321's test suite
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 8193)  # just over two of its 1 MiB blocks
    assert md5sum(big) == hashlib.md5(big.read_bytes()).hexdigest()  # one-shot reference
    path, md5 = fake_tar
    assert md5sum(path) == md5


def test_batches_are_channel_planar_decoded(tmp_path):
    # A row holds all red values, then all green, then all blue (each 32x32 row-major).
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[0 * 1024 + 1 * 32 + 2] = 200  # red of the pixel at row 1, column 2
    row[2 * 1024 + 31 * 32 + 0] = 99  # blue of the pixel at row 31, column 0
    files = member_files()
    batch = {b"data": row[None, :], b"labels": [7], b"batch_label": b"x", b"filenames": [b"a.png"]}
    files[f"{FOLDER}/data_batch_1"] = pickle.dumps(batch, protocol=2)
    folder = safe_extract(build_tar(tmp_path / ARCHIVE, files), tmp_path / "out")
    train_x, train_y, test_x, test_y = read_batches(folder)
    assert train_x.dtype == np.uint8 and train_x.shape == (1 + 4 * PER_BATCH, 32, 32, 3)
    assert train_x.flags["C_CONTIGUOUS"]
    assert train_x[0, 0, 0].tolist() == [10, 20, 30]
    assert train_x[0, 1, 2].tolist() == [200, 20, 30]
    assert train_x[0, 31, 0].tolist() == [10, 20, 99]
    assert train_y[0] == 7 and train_y.dtype == np.int64
    assert test_x.shape == (PER_BATCH, 32, 32, 3) and test_y.shape == (PER_BATCH,)


def test_load_from_tarball_verifies_and_extracts_into_root(fake_tar, tmp_path):
    path, md5 = fake_tar
    root = tmp_path / "root"
    data, classes = load_cifar10(path, root, expected_md5=md5)
    assert classes == list(CLASSES)
    assert data["train"][0].shape == (5 * PER_BATCH, 32, 32, 3)
    assert data["test"][0].shape == (PER_BATCH, 32, 32, 3)
    assert sorted(p.name for p in (root / FOLDER).iterdir()) == sorted(Path(m).name for m in MEMBERS)
    # The extracted folder (or its parent) can be passed directly too.
    for source in (root / FOLDER, root):
        again, _ = load_cifar10(source)
        np.testing.assert_array_equal(again["train"][0], data["train"][0])


def test_user_tarball_with_wrong_checksum_is_refused(fake_tar, tmp_path):
    path, md5 = fake_tar
    with pytest.raises(AlexnetError, match=f"MD5 {md5} but the official CIFAR-10 archive has {cifar10.MD5}"):
        load_cifar10(path, tmp_path / "root")
    assert nothing_extracted(tmp_path / "root")


def test_unverified_tarball_is_read_without_filling_the_data_root(fake_tar, tmp_path):
    path, _ = fake_tar
    data, _ = load_cifar10(path, tmp_path / "root", expected_md5=None)
    assert data["test"][1].shape == (PER_BATCH,)
    assert nothing_extracted(tmp_path / "root")


def test_named_source_extracts_a_cached_archive_once(fake_tar, tmp_path, monkeypatch):
    path, md5 = fake_tar
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    os.link(path, tmp_path / "data" / ARCHIVE)
    data, _ = load_cifar10("cifar10", expected_md5=md5)
    assert (tmp_path / "data" / FOLDER / "test_batch").is_file()
    monkeypatch.setattr(cifar10, "safe_extract", None)  # a second load must not extract again
    again, _ = load_cifar10(None, expected_md5=md5)
    np.testing.assert_array_equal(again["test"][0], data["test"][0])


def test_missing_source_path_says_what_to_pass(tmp_path):
    with pytest.raises(AlexnetError, match="does not exist; pass --data cifar10"):
        load_cifar10(tmp_path / "nope.tar.gz")


def test_tar_with_parent_path_is_refused(tmp_path):
    files = member_files()
    tar = build_tar(tmp_path / ARCHIVE, files, extra=lambda t: add_file(t, f"{FOLDER}/../../evil.txt", b"x"))
    dest = tmp_path / "dest"
    with pytest.raises(AlexnetError, match="points outside the archive"):
        safe_extract(tar, dest)
    assert nothing_extracted(dest) and not (tmp_path / "evil.txt").exists()


def test_tar_with_absolute_path_is_refused(tmp_path):
    tar = build_tar(tmp_path / ARCHIVE, member_files(), extra=lambda t: add_file(t, "/tmp/evil.txt", b"x"))
    with pytest.raises(AlexnetError, match="points outside the archive"):
        safe_extract(tar, tmp_path / "dest")
    assert nothing_extracted(tmp_path / "dest")


@pytest.mark.parametrize("kind, named", [(tarfile.SYMTYPE, "is a symbolic link"), (tarfile.LNKTYPE, "is a hard link")])
def test_tar_with_symlink_member_is_refused(tmp_path, kind, named):
    files = member_files()
    del files[f"{FOLDER}/data_batch_1"]
    tar = build_tar(
        tmp_path / ARCHIVE, files, extra=lambda t: add_link(t, f"{FOLDER}/data_batch_1", "/etc/passwd", kind)
    )
    with pytest.raises(AlexnetError, match=named):
        safe_extract(tar, tmp_path / "dest")
    assert nothing_extracted(tmp_path / "dest")


def test_tar_with_device_member_is_refused(tmp_path):
    def add_device(tar):
        info = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)

    files = member_files()
    del files[f"{FOLDER}/data_batch_1"]
    with pytest.raises(AlexnetError, match="device"):
        safe_extract(build_tar(tmp_path / ARCHIVE, files, extra=add_device), tmp_path / "dest")


def test_tar_with_duplicate_member_is_refused(tmp_path):
    extra = lambda t: add_file(t, f"./{FOLDER}/test_batch", batch_bytes(9))  # noqa: E731
    with pytest.raises(AlexnetError, match="appears twice"):
        safe_extract(build_tar(tmp_path / ARCHIVE, member_files(), extra=extra), tmp_path / "dest")


def test_tar_extracts_only_known_members(tmp_path):
    def extras(tar):
        add_file(tar, f"{FOLDER}/run_me.py", b"print('hi')")
        add_file(tar, "elsewhere.txt", b"x")

    folder = safe_extract(build_tar(tmp_path / ARCHIVE, member_files(), extra=extras), tmp_path / "dest")
    assert folder == tmp_path / "dest" / FOLDER
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [FOLDER]
    assert not (folder / "run_me.py").exists()


def test_tar_missing_a_batch_is_refused(tmp_path):
    files = member_files()
    del files[f"{FOLDER}/data_batch_3"]
    with pytest.raises(AlexnetError, match="lacks cifar-10-batches-py/data_batch_3"):
        safe_extract(build_tar(tmp_path / ARCHIVE, files), tmp_path / "dest")
    assert nothing_extracted(tmp_path / "dest")


def test_corrupt_archive_is_an_alexnet_error(tmp_path):
    bad = tmp_path / ARCHIVE
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(AlexnetError, match=f"cannot read {bad}: .*damaged.*download {ARCHIVE} again"):
        safe_extract(bad, tmp_path / "dest")


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    files = member_files()
    files[f"{FOLDER}/data_batch_2"] = pickle.dumps({b"data": Exploit()}, protocol=2)
    folder = safe_extract(build_tar(tmp_path / ARCHIVE, files), tmp_path / "dest")
    with pytest.raises(AlexnetError, match="data_batch_2 is not a CIFAR-10 python batch"):
        read_batches(folder)
    assert not (tmp_path / "pwned").exists()


def test_label_names_come_from_batches_meta(fake_tar, tmp_path):
    folder = safe_extract(fake_tar[0], tmp_path / "dest")
    assert read_label_names(folder) == list(CLASSES)


def test_checksum_mismatch_is_refused_and_nothing_left_behind(fake_tar, tmp_path):
    path, md5 = fake_tar
    root = tmp_path / "root"
    with pytest.raises(AlexnetError) as info:
        download(root, url=path.as_uri(), md5="0" * 32)
    message = str(info.value)
    assert md5 in message and "0" * 32 in message and ARCHIVE in message
    assert list(root.iterdir()) == []


@pytest.fixture
def local_server(fake_tar):
    """Serve the fake archive's folder on 127.0.0.1 (loopback only)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(fake_tar[0].parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_from_local_server_verifies_and_extracts(fake_tar, local_server, tmp_path, capfd):
    _, md5 = fake_tar
    root = tmp_path / "root"
    seen = []
    path = download(root, url=local_server, md5=md5, progress=lambda done, total: seen.append((done, total)))
    assert path == root / ARCHIVE and md5sum(path) == md5
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    path.unlink()
    capfd.readouterr()
    data, classes = load_cifar10(None, root, url=local_server, expected_md5=md5)
    assert classes == list(CLASSES) and data["train"][1].shape == (5 * PER_BATCH,)
    assert sorted(p.name for p in root.iterdir()) == sorted([ARCHIVE, FOLDER])
    # A first run says what it downloads, how big it is and where it goes, on stderr (stdout stays clean).
    out, err = capfd.readouterr()
    size_mb = (root / ARCHIVE).stat().st_size / 1e6
    assert f"downloading CIFAR-10 ({size_mb:.1f} MB) from {local_server} into {root}" in err and out == ""


def test_offline_download_error_says_how_to_pass_local_copy(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(AlexnetError) as info:
        load_cifar10(None, root, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    message = str(info.value)
    assert message.startswith("could not download CIFAR-10 from http://127.0.0.1:9/")
    assert f"--data /path/to/{ARCHIVE}" in message and "\n" not in message
    assert f"--data /path/to/{FOLDER}" in message and "$ALEXNET_DATA" in message  # all three ways
    assert list(root.iterdir()) == []


def test_http_error_is_reported(local_server, tmp_path):
    with pytest.raises(AlexnetError, match="HTTP 404"):
        download(tmp_path, url=local_server + ".missing")


def test_batches_pickled_with_old_numpy_core_names_are_read(tmp_path):
    # Python 2 era pickles (the official ones) name numpy.core.multiarray, not numpy._core.
    files = member_files()
    old_style = files[f"{FOLDER}/test_batch"].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in old_style
    files[f"{FOLDER}/test_batch"] = old_style
    folder = safe_extract(build_tar(tmp_path / ARCHIVE, files), tmp_path / "dest")
    expected = pickle.loads(batch_bytes(0), encoding="bytes")[b"data"]
    test_x = read_batches(folder)[2]
    np.testing.assert_array_equal(test_x[3].transpose(2, 0, 1).reshape(-1), expected[3])
