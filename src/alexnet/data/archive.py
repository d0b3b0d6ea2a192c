"""Image folders packed as .tar.gz (such as a JPEG copy of CIFAR-10): checked, extracted once, reused."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import AlexnetError
from .cifar10 import FOLDER as CIFAR_FOLDER
from .cifar10 import _member_name
from .folder import IMAGE_EXTENSIONS


def is_cifar_archive(tar_path: Path) -> bool:
    """True for the official python-batches archive (its first member is cifar-10-batches-py/...)."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise AlexnetError(f"--data {tar_path} is not a readable .tar.gz archive ({e})") from None
    return first is not None and CIFAR_FOLDER in first.name


def archive_key(tar_path: Path) -> str:
    st = tar_path.stat()
    return hashlib.sha256(f"{tar_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def extract_image_archive(tar_path: Path, cache_root: Path) -> Path:
    """Extract the image files of `tar_path` under the cache (once); return the extracted folder.

    Every member is checked first: absolute or `..` paths, links and devices are refused; only image
    files and folders are written, into a temp folder renamed into place, so a failure leaves nothing.
    """
    dest = cache_root / "archives" / f"{tar_path.name.split('.')[0]}-{archive_key(tar_path)}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                name = _member_name(member, tar_path)
                if member.isfile() and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    member.name = name
                    tar.extract(member, tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        os.rename(tmp, dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise AlexnetError(f"cannot extract --data {tar_path} ({e}); check the archive") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
