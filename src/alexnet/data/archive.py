"""Image folders packed as .tar.gz (such as a JPEG copy of CIFAR-10): read in memory, decoded once, cached.

The archive is never extracted to disk: writing 50,000 small files cost 6.6 s of a cold start on the
2-core box, reading the same members in memory 1 s. Members are walked by `tarball.py` (no absolute or
`..` paths, no links or devices, every inflated byte counted against the limits of `limits.py`) and laid
out by the same rules as an image folder (see `folder.py`): ``train/<class>/*``, optional ``val/`` and
``test/``, or ``<class>/*`` alone. The decoded arrays are cached under a key of the archive's path, size
and modification time, so a warm start reads one .npz and never opens the tarball.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import PIL

from ..errors import AlexnetError
from .cifar10 import FOLDER as CIFAR_FOLDER
from .folder import _IGNORED_NAMES, IMAGE_EXTENSIONS, decode_images
from .tarball import first_member, member_parts, members

_CACHE_FORMAT = 2


def is_cifar_archive(tar_path: Path) -> bool:
    """True for the official python-batches archive (its first member is cifar-10-batches-py/...)."""
    first = first_member(tar_path)
    return first is not None and CIFAR_FOLDER in first


def archive_key(tar_path: Path, size: int | None = None) -> str:
    st = tar_path.stat()
    text = f"{tar_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{PIL.__version__}|{_CACHE_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_image(parts: tuple[str, ...]) -> bool:
    return (bool(parts) and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS
            and all(not p.startswith(".") and p not in _IGNORED_NAMES for p in parts))


def read_members(tar_path: Path) -> dict[str, bytes]:
    """{checked relative name: bytes} of the visible image files in the archive, read one member at a time
    (see `tarball.members`); other members are checked and skipped unread."""
    found: dict[str, bytes] = {}
    for member in members(tar_path):
        if member.is_dir or not _is_image(member_parts(member.name)):
            continue
        if member.name in found:  # which copy would win is up to the order of the walk: refuse instead
            raise AlexnetError(f"refusing {tar_path}: member {member.name!r} appears twice; pack each file once")
        found[member.name] = member.read()
    return found


def layout(names: list[str], tar_path: Path) -> tuple[list[str], dict[str, tuple[list[str], list[int]]]]:
    """(classes, {split: (member names, labels)}) by the rules of an image folder."""
    where = f"--data {tar_path}"
    split_parts = {n: member_parts(n) for n in names}
    tops = {p[0] for p in split_parts.values() if len(p) >= 3}
    split_layout = "train" in tops
    rename = {}
    if not split_layout and tops and tops <= {"test", "val"} and all(len(p) >= 3 for p in split_parts.values()):
        held = "test" if "test" in tops else "val"  # a held-out split packed alone: it is the data
        names = [n for n in names if split_parts[n][0] == held]
        rename = {held: "train"}
        split_layout = True
    by_split: dict[str, dict[str, list[str]]] = {}
    for name in names:
        parts = split_parts[name]
        if split_layout:
            if len(parts) < 3 or parts[0] not in ("train", "val", "test"):
                continue
            split, cls = rename.get(parts[0], parts[0]), parts[1]
        else:
            if len(parts) < 2:
                continue
            split, cls = "train", parts[0]
        by_split.setdefault(split, {}).setdefault(cls, []).append(name)
    train = by_split.get("train", {})
    if not train:
        raise AlexnetError(f"no images found in {where}; expected members train/<class>/*.jpg or <class>/*.jpg, "
                           f"with extensions {' '.join(sorted(IMAGE_EXTENSIONS))}")
    classes = sorted(train)
    if len(classes) < 2:
        raise AlexnetError(f"found 1 class ({classes[0]}) in {where}; need at least 2 classes, one folder each")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split in ("train", "val", "test"):
        if split not in by_split:
            continue
        members: list[str] = []
        labels: list[int] = []
        for cls in sorted(by_split[split]):
            if cls not in index:
                raise AlexnetError(f"class folder {split}/{cls} in {where} has no matching folder in the train "
                                   f"split (train classes: {', '.join(classes)})")
            files = sorted(by_split[split][cls])
            members += files
            labels += [index[cls]] * len(files)
        splits[split] = (members, labels)
    return classes, splits


def _cache_path(tar_path: Path, cache_root: Path, size: int | None) -> Path:
    return cache_root / "archives" / f"{tar_path.name.split('.')[0]}-{archive_key(tar_path, size)}.npz"


def _read_cache(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            data = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in meta["splits"]}
        if meta.get("format") != _CACHE_FORMAT or any(x.dtype != np.uint8 or x.ndim != 4 for x, _ in data.values()):
            return None
        return data, list(meta["classes"])
    except Exception:  # noqa: BLE001 - a missing or damaged entry only means "decode again"
        return None


def _write_cache(path: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]) -> None:
    """Atomically: a temp file renamed into place, so a crash never leaves a half entry."""
    meta = json.dumps({"format": _CACHE_FORMAT, "classes": classes, "splits": list(data)})
    arrays = {"meta": np.array(meta)}
    for split, (images, labels) in data.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, zipfile.BadZipFile) as e:
        warnings.warn(f"could not cache the decoded images in {path.parent} ({e}); the next run decodes again",
                      stacklevel=2)


def load_image_archive(tar_path: Path, cache_root: Path, size: int | None = None, workers: int = 0
                       ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """({split: (uint8 NHWC images, labels)}, classes) of an image-folder archive, cached after the first call."""
    cache = _cache_path(tar_path, cache_root, size)
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    members = read_members(tar_path)
    classes, splits = layout(sorted(members), tar_path)
    items = [(f"{tar_path}:{name}", members[name]) for names, _ in splits.values() for name in names]
    images = decode_images(items, size, workers, root=tar_path)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    offset = 0
    for split, (names, labels) in splits.items():
        data[split] = (images[offset:offset + len(names)], np.asarray(labels, dtype=np.int64))
        offset += len(names)
    _write_cache(cache, data, classes)
    return data, classes
