"""The official CIFAR-10 python archive: download, verify, extract safely, read.

Layout of the archive (``cifar-10-python.tar.gz``)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5   10,000 training images each
    cifar-10-batches-py/test_batch                     10,000 test images
    cifar-10-batches-py/batches.meta                   label names
    cifar-10-batches-py/readme.html

Each batch is a pickled dict: ``b"data"`` is a uint8 array of shape
(N, 3072) whose rows hold the red, green and blue 32x32 planes in turn, and
``b"labels"`` a list of N ints in 0..9.

On pickles: unpickling can run code in general. The batches are read with a
restricted unpickler that only rebuilds numpy arrays, dtypes and plain
Python containers, so even a file that was not verified (a folder the user
pointed at) cannot run code; archives we download, or that the user passes,
are also checked against the official MD5 before extraction.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import importlib
import os
import pickle
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from alexnet.data import tarball
from alexnet.errors import AlexnetError

__all__ = [
    "URL",
    "MD5",
    "CLASSES",
    "ARCHIVE",
    "FOLDER",
    "MEMBERS",
    "default_root",
    "md5sum",
    "verify_md5",
    "download",
    "safe_extract",
    "read_batches",
    "read_label_names",
    "load_cifar10",
]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
# Members that must be in the archive, and the one that may be (and is extracted if so).
_NEEDED = tuple(f"{FOLDER}/{name}" for name in (*TRAIN_BATCHES, TEST_BATCH, META))
_OPTIONAL = (f"{FOLDER}/readme.html",)
MEMBERS = _NEEDED + _OPTIONAL
"""Every archive member that is extracted; all others are skipped."""

# The real batches are ~31 MB; anything far larger is not CIFAR-10 (or is a bomb).
_MAX_MEMBER_BYTES = 64 * 1024 * 1024
_IMAGE_SIDE = 32
_ROW = 3 * _IMAGE_SIDE * _IMAGE_SIDE
_TIMEOUT_S = 60
_HOW_TO_PASS = (
    f"offline, pass a local copy in one of three ways: --data /path/to/{ARCHIVE}, --data /path/to/{FOLDER} "
    f"(the extracted folder), or put {ARCHIVE} into $ALEXNET_DATA (default ~/.cache/alexnet) and keep --data cifar10"
)


def default_root() -> Path:
    """Where datasets are kept: ``$ALEXNET_DATA`` if set, else ``~/.cache/alexnet``."""
    configured = os.environ.get("ALEXNET_DATA")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "alexnet"


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike[str], expected: str | None, hint: str = "") -> None:
    """Raise ``AlexnetError`` unless ``path`` has MD5 ``expected`` (None skips the check)."""
    if expected is None:
        return
    try:
        actual = md5sum(path)
    except OSError as exc:
        raise AlexnetError(f"cannot read {path} ({exc.strerror or exc}); check the file and its permissions") from exc
    if actual != expected.lower():
        hint = hint or f"pass the official {ARCHIVE}"
        raise AlexnetError(
            f"{path} has MD5 {actual} but the official CIFAR-10 archive has {expected}; "
            f"the file is damaged or not CIFAR-10: {hint}"
        )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlexnetError(
            f"cannot create the data folder {path} ({exc.strerror or exc}); set ALEXNET_DATA to a writable folder"
        ) from exc


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return " ".join(str(exc.reason).split())
    return " ".join(str(exc).split()) or type(exc).__name__


# Everything a failing connection can raise: URLError/HTTPError, http.client protocol
# errors, socket errors and timeouts (OSError), and ValueError for a malformed URL.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


def _network_error(url: str, exc: BaseException) -> AlexnetError:
    return AlexnetError(f"could not download CIFAR-10 from {url} ({_network_reason(exc)}); {_HOW_TO_PASS}")


def _fetch(url: str, out: BinaryIO, progress: Callable[[int, int | None], None] | None) -> str:
    """Copy ``url`` into ``out``; return the MD5 of what was received."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - URL is ours or a test's
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc) from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        while True:
            try:
                block = response.read(1 << 20)
            except _NETWORK_ERRORS as exc:
                raise _network_error(url, exc) from exc
            if not block:
                break
            out.write(block)  # outside the try: a full disk is not a network problem
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def download(
    root: str | os.PathLike[str],
    url: str = URL,
    md5: str | None = MD5,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download the archive to ``root/cifar-10-python.tar.gz`` and return that path.

    The bytes go to a temporary file in ``root`` first; only after the MD5
    matches (``md5=None`` skips the check) is it renamed into place, so an
    interrupted or damaged download never looks like a good archive.
    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives.
    Raises ``AlexnetError`` saying how to pass a local copy when offline.
    """
    root = Path(root).expanduser()
    _make_dir(root)
    dest = root / ARCHIVE
    tmp: Path | None = None
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{ARCHIVE}.", suffix=".part", dir=root)
        tmp = Path(tmp_name)
        with os.fdopen(handle, "wb") as out:
            actual = _fetch(url, out, progress)
        if md5 is not None and actual != md5.lower():
            raise AlexnetError(
                f"downloaded {dest} from {url} has MD5 {actual} but expected {md5} "
                f"(damaged or incomplete download; it was deleted); run again, or {_HOW_TO_PASS}"
            )
        os.replace(tmp, dest)
        tmp = None
    except OSError as exc:
        raise AlexnetError(
            f"cannot write {dest} ({exc.strerror or exc}); free some space or set ALEXNET_DATA to another folder"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest


class DownloadBar:
    """A progress bar on stderr for `download` (size, speed, time left; the archive is ~170 MB)."""

    def __init__(self, url: str, root: Path):
        self.url, self.root, self.bar, self.task = url, root, None, None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            # lazy: rich's progress bar only once a download starts (reading a cached copy never draws one)
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            size = f"{total / 1e6:.1f} MB" if total else "size unknown"
            print(f"downloading CIFAR-10 ({size}) from {self.url} into {self.root}", file=sys.stderr)
            self.bar = Progress("CIFAR-10", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("download", total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ----------------------------------------------------------------------------- extraction


def _write_member(dest: Path, name: str, data: bytes) -> None:
    """Write one checked member's bytes to ``dest/name`` (``name`` is one of MEMBERS, so it stays inside)."""
    path = dest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        out.write(data)


def _folder_complete(folder: Path) -> bool:
    return all((folder / PurePosixPath(name).name).is_file() for name in _NEEDED)


def safe_extract(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract the CIFAR-10 members of ``tar_path`` into ``dest``; return ``dest/cifar-10-batches-py``.

    Only the known member names are extracted; other plain members are
    skipped. Any member with an absolute or ``..`` path, any link or device,
    a duplicate or oversized data member, a missing one, or an archive that
    breaks a rule or limit of ``tarball.members`` makes it refuse with an
    ``AlexnetError``. Extraction happens in a temporary folder that is
    renamed into place at the end, so a failure leaves nothing half-written.
    """
    tar_path = Path(tar_path).expanduser()
    dest = Path(dest).expanduser()
    _make_dir(dest)
    final = dest / FOLDER
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=dest))
    except OSError as exc:
        raise AlexnetError(f"cannot write to {dest} ({exc.strerror or exc}); set ALEXNET_DATA to a writable folder") from exc
    try:
        found: set[str] = set()
        # One walk over the gzip stream, every member checked and counted (tarball.py), the known ones written.
        for member in tarball.members(tar_path, hint=f"use the official {ARCHIVE}", fix=f"download {ARCHIVE} again"):
            if member.name not in MEMBERS:
                continue
            if member.name in found:
                raise AlexnetError(f"refusing {tar_path}: member {member.name!r} appears twice; use the official {ARCHIVE}")
            if member.is_dir or member.size > _MAX_MEMBER_BYTES:
                raise AlexnetError(
                    f"refusing {tar_path}: member {member.name!r} is not a regular file of at most "
                    f"{_MAX_MEMBER_BYTES >> 20} MiB (the real batches are 31 MB); use the official {ARCHIVE}"
                )
            data = member.read()
            try:
                _write_member(tmp, member.name, data)
            except OSError as exc:
                raise AlexnetError(f"cannot write {tmp / member.name} ({exc.strerror or exc}); free some space "
                                   f"or set ALEXNET_DATA to another folder") from exc
            found.add(member.name)
        missing = [name for name in _NEEDED if name not in found]
        if missing:
            raise AlexnetError(
                f"{tar_path} lacks {missing[0]} ({len(missing)} CIFAR-10 file(s) missing); "
                f"it is not the complete CIFAR-10 python archive: download {ARCHIVE} again"
            )
        try:
            if final.exists():  # an incomplete earlier copy; replaced by the verified one
                shutil.rmtree(final)
            os.rename(tmp / FOLDER, final)
        except OSError as exc:
            raise AlexnetError(f"cannot create {final} ({exc.strerror or exc}); remove it and run again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- reading


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former, new ones the
    # latter. Try both spellings, the installed numpy's own first (no deprecation warning).
    spellings = {module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")}
    for candidate in sorted(spellings, key=lambda m: not m.startswith("numpy._core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot find {module}.{name}")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and builtins, and nothing that runs code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _numpy_global(module, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = _BatchUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise AlexnetError(f"CIFAR-10 file {path} is missing; pass the complete {FOLDER} folder or {ARCHIVE}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure means "not a CIFAR-10 batch"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AlexnetError(
            f"{path} is not a CIFAR-10 python batch ({reason}); extract {ARCHIVE} again or download it again"
        ) from exc
    if not isinstance(data, dict):
        raise AlexnetError(f"{path} is not a CIFAR-10 python batch (holds a {type(data).__name__}, not a dict)")
    return data


def _field(batch: dict, key: str) -> Any:
    # Official (Python 2) pickles give bytes keys; accept str keys from re-pickled copies.
    return batch.get(key.encode(), batch.get(key))


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as uint8 NHWC images and int64 labels."""
    batch = _load_pickle(path)
    data = _field(batch, "data")
    labels = _field(batch, "labels")
    bad = f"{path} is not a CIFAR-10 python batch"
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _ROW:
        raise AlexnetError(f"{bad} (expected 'data' of shape (N, {_ROW})); extract {ARCHIVE} again")
    if labels is None or len(labels) != data.shape[0]:
        raise AlexnetError(f"{bad} ('labels' missing or not one per image); extract {ARCHIVE} again")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.size and (data.min() < 0 or data.max() > 255):
            raise AlexnetError(f"{bad} ('data' is not 8-bit pixels); extract {ARCHIVE} again")
    labels_array = np.asarray(labels, dtype=np.int64)
    # Rows are channel-planar: R(1024) G(1024) B(1024), each plane row-major 32x32.
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, _IMAGE_SIDE, _IMAGE_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels_array


def read_label_names(folder: str | os.PathLike[str]) -> list[str]:
    """Class names from ``batches.meta`` (``b"label_names"``), in label order."""
    path = Path(folder) / META
    names = _field(_load_pickle(path), "label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise AlexnetError(f"{path} has no list of label names; extract {ARCHIVE} again")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def read_batches(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a ``cifar-10-batches-py`` folder as ``(train_x, train_y, test_x, test_y)``.

    Images are uint8 ``(N, 32, 32, 3)`` (NHWC, RGB), labels int64 ``(N,)``.
    The pickles are read with an unpickler that only rebuilds numpy arrays and
    plain containers, so a folder from anywhere cannot run code when loaded.
    """
    folder = Path(folder)
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _read_batch(folder / TEST_BATCH)
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y


def _load_folder(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    train_x, train_y, test_x, test_y = read_batches(folder)
    classes = read_label_names(folder)
    for split, labels in (("train", train_y), ("test", test_y)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise AlexnetError(
                f"{folder}: {split} labels go outside the {len(classes)} names in {META}; extract {ARCHIVE} again"
            )
    return {"train": (train_x, train_y), "test": (test_x, test_y)}, classes


def _is_named_source(source: str | os.PathLike[str] | None) -> bool:
    return source is None or (isinstance(source, str) and source.lower() in ("cifar10", "cifar-10"))


def load_cifar10(
    source: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    expected_md5: str | None = MD5,
    url: str = URL,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Load CIFAR-10 as ``({"train": (x, y), "test": (x, y)}, classes)``.

    ``source`` is one of:

    - ``None`` or ``"cifar10"``: use ``root/cifar-10-batches-py`` if complete,
      else verify and extract ``root/cifar-10-python.tar.gz``, else download it
      from ``url`` first (``root`` defaults to :func:`default_root`);
    - a path to the ``.tar.gz``: verified against ``expected_md5`` and
      extracted into ``root`` (once); with ``expected_md5=None`` it is not
      verified and is extracted to a temporary folder instead;
    - a ``cifar-10-batches-py`` folder (or its parent): read directly.

    Images are uint8 NHWC ``(N, 32, 32, 3)``, labels int64.
    """
    root_dir = Path(root).expanduser() if root is not None else default_root()
    if _is_named_source(source):
        folder = root_dir / FOLDER
        if not _folder_complete(folder):
            archive = root_dir / ARCHIVE
            if archive.is_file():
                verify_md5(archive, expected_md5, hint=f"delete {archive} and run again to download it afresh")
            else:
                bar = DownloadBar(url, root_dir)
                try:
                    archive = download(root_dir, url=url, md5=expected_md5, progress=bar)
                finally:
                    bar.close()
            safe_extract(archive, root_dir)
        return _load_folder(folder)

    path = Path(source).expanduser()
    if path.is_dir():
        for folder in (path, path / FOLDER):
            if (folder / TRAIN_BATCHES[0]).is_file():
                return _load_folder(folder)
        raise AlexnetError(
            f"{path} is not a CIFAR-10 folder (no {TRAIN_BATCHES[0]} in it); pass the {FOLDER} folder or {ARCHIVE}"
        )
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise AlexnetError(f"{path} is not a CIFAR-10 archive; pass {ARCHIVE} or the extracted {FOLDER} folder")
        verify_md5(path, expected_md5, hint=f"download the official {ARCHIVE} again")
        if expected_md5 is None:
            # Unverified: do not let it populate the shared data folder.
            with tempfile.TemporaryDirectory(prefix="alexnet-cifar10-") as tmp:
                return _load_folder(safe_extract(path, tmp))
        folder = root_dir / FOLDER
        if not _folder_complete(folder):
            safe_extract(path, root_dir)
        return _load_folder(folder)
    raise AlexnetError(
        f"CIFAR-10 source {path} does not exist; pass --data cifar10 to download it, "
        f"or the path of {ARCHIVE} or of the extracted {FOLDER} folder"
    )
