"""Read a tar archive from untrusted hands: one member at a time, each checked, under limits.

The one way the project reads tarballs: image archives (`archive.py`) and the CIFAR-10 python archive
(`cifar10.py`) both walk :func:`members`. Plain tar, gzip, bzip2 and xz are inflated as a stream and
every inflated byte is counted, so a bomb stops at a limit (`limits.py`) with bounded memory; a member's
size is checked on its header, before a byte of it is read. Refused, with one line naming the archive,
the member and the rule or limit:

- a name that is absolute, holds ``..`` or a drive letter (it would land outside the destination);
- anything but a plain file or folder: symbolic and hard links, devices, FIFOs, sparse files;
- a member larger than ALEXNET_MAX_MEMBER_BYTES, an archive inflating past ALEXNET_MAX_ARCHIVE_BYTES or
  holding more than ALEXNET_MAX_MEMBERS headers; an extended (pax / GNU long-name) header over 1 MiB;
- a member that claims one size and holds another: what follows its declared end is not the next header
  or the end-of-archive marker, or the archive ends inside it;
- a truncated archive: its compressed stream or its tar structure ends early (no end-of-archive marker).

Python's tarfile alone ends the walk silently at the first block that is not a header, so a member whose
size field is too small would drop every member after it without a word; here that is an error.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AlexnetError
from .limits import ARCHIVE_BYTES, MEMBER_BYTES, MEMBERS

__all__ = ["ArchiveError", "Limits", "Member", "member_parts", "members", "first_member"]

# pax and GNU long-name headers hold a few hundred bytes; tarfile reads one whole into memory before it
# returns the member it describes, so a huge one is refused on its own header.
_MAX_META_BYTES = 1 << 20
_META_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
# After the end-of-archive marker, tar pads to a record (10 KiB by default, up to 1 MiB with a large
# blocking factor); that much is read on to check the compressed stream's own end and checksum.
_TAIL_BYTES = 1 << 20
_DEFAULT_FIX = "check the archive or copy it again"


class ArchiveError(AlexnetError):
    """An archive refused or unreadable; the message is one line naming it."""


@dataclass(frozen=True)
class Limits:
    """Caps on one archive: inflated bytes in all, bytes per member, member headers."""

    archive_bytes: int
    member_bytes: int
    members: int

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(ARCHIVE_BYTES.get(), MEMBER_BYTES.get(), MEMBERS.get())


def member_parts(name: str) -> tuple[str, ...]:
    """``PurePosixPath(name).parts`` of a relative name without building a path object: an archive of
    50,000 images asks for them several times a member (1.6 s of a cold start on the 2-core box)."""
    return tuple(p for p in name.split("/") if p and p != ".")


class _Stop(Exception):
    """Raised inside tarfile's calls by the checks below; turned into an ArchiveError naming the archive."""

    def __init__(self, kind: str, value: int = 0, detail: str = ""):
        super().__init__(kind)
        self.kind, self.value, self.detail = kind, value, detail


class _CheckedInfo(tarfile.TarInfo):
    """tarfile's header, checked as it is parsed: tarfile would otherwise read an extended header of any
    size into memory, and hides why a walk ended (a clean end-of-archive marker, or a block of junk)."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        info = super().frombuf(buf, encoding, errors)
        if info.type in _META_TYPES and info.size > _MAX_META_BYTES:
            raise _Stop("meta", info.size)
        return info

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.alexnet_stop = exc  # tarfile's next() ends the walk on most of these without saying which
            raise


class _Forward:
    """The archive's inflated tar stream as the seekable file tarfile reads: every inflated byte is counted
    and reading past ``limit`` raises before the bytes pile up; a seek forward skips (reading and counting),
    one backward may only return into the bytes still buffered. A walk in archive order needs no more, and
    tarfile's own stream mode ("r|") costs a copy of its 10 KiB buffer per header read."""

    _CHUNK = 1 << 18

    def __init__(self, inner, limit: int):
        self.inner, self.limit = inner, limit
        self.buf, self.start, self.pos, self.count = b"", 0, 0, 0  # buf holds stream bytes start.. ; pos: tell()

    def _more(self, size: int) -> bytes:
        chunk = self.inner.read(size)
        self.count += len(chunk)
        if self.count > self.limit:
            raise _Stop("archive", self.count)
        return chunk

    def tell(self) -> int:
        return self.pos

    def read(self, size: int) -> bytes:
        i = self.pos - self.start
        if i + size > len(self.buf):  # refill: keep what is unread, append until `size` bytes or the end
            parts, have = [self.buf[i:]], len(self.buf) - i
            while have < size:
                chunk = self._more(max(self._CHUNK, size - have))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            self.buf, self.start, i = b"".join(parts), self.pos, 0
        data = self.buf[i:i + size]
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.start:
            raise tarfile.StreamError("a tar archive is read in order; seeking back is not possible")
        end = self.start + len(self.buf)
        while pos > end:  # skip what lies before `pos`, keeping none of it
            chunk = self._more(min(self._CHUNK, pos - end))
            if not chunk:
                break
            self.buf, self.start = chunk, end
            end += len(chunk)
        if pos > end:
            self.buf, self.start = b"", pos  # past the end: reads give nothing, as for a file
        self.pos = pos
        return pos

    def rest(self, size: int) -> int:
        """Read on up to ``size`` bytes past the buffer (the end of the stream is checked on the way)."""
        got = 0
        while got < size:
            chunk = self._more(min(self._CHUNK, size - got))
            if not chunk:
                break
            got += len(chunk)
        return got


def _inflater(raw: io.BufferedReader, path: Path) -> io.BufferedIOBase | io.RawIOBase:
    """A reader of the tar stream inside ``raw``, by the file's magic bytes (not its name)."""
    magic = raw.peek(8)[:8]
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    if magic.startswith(b"PK\x03\x04"):
        raise ArchiveError(f"cannot read {path}: it is a zip file; pack the folder as a tar archive "
                           f"(tar -czf {path.name.split('.')[0]}.tar.gz FOLDER)")
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise ArchiveError(f"cannot read {path}: zstd compression is not supported; recompress it with gzip")
    return raw


class Member:
    """One checked member: ``name`` (normalised, relative), ``size``, ``is_dir``; :meth:`read` gives the
    bytes of a file, and only while the walk is at this member."""

    def __init__(self, name: str, info: tarfile.TarInfo, walk: "_Walk"):
        self.name, self.size, self.is_dir = name, info.size, info.isdir()
        self._info, self._walk = info, walk

    def read(self) -> bytes:
        walk = self._walk
        if walk.current is not self or self.is_dir:
            raise RuntimeError(f"member {self.name!r} can only be read while the walk is at it")
        try:
            walk.stream.seek(self._info.offset_data)  # plain files only (no sparse ones): the data is contiguous
            data = walk.stream.read(self.size)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the archive
            raise walk.failure(exc) from None
        if len(data) != self.size:
            raise walk.error(f"it ends inside member {self.name!r}, after {len(data):,} of its {self.size:,} bytes",
                             truncated=True)
        return data


class _Walk:
    """State of one walk: the archive, its limits, the member it is at, what the refusals say."""

    def __init__(self, path: Path, limits: Limits, hint: str, fix: str):
        self.path, self.limits, self.hint, self.fix = path, limits, hint, fix
        self.tar: tarfile.TarFile | None = None
        self.stream: _Forward | None = None
        self.current: Member | None = None
        self.last_name: str | None = None

    def refuse(self, rule: str) -> ArchiveError:
        return ArchiveError(f"refusing {self.path}: {rule}" + (f"; {self.hint}" if self.hint else ""))

    def error(self, what: str, truncated: bool = False) -> ArchiveError:
        return ArchiveError(f"cannot read {self.path}: {what}{' (truncated)' if truncated else ''}; {self.fix}")

    def at(self) -> str:
        if self.current is not None:
            return f" at member {self.current.name!r}"
        return f" after member {self.last_name!r}" if self.last_name else ""

    def failure(self, exc: BaseException) -> AlexnetError:
        """What an exception raised inside tarfile or the inflater means, as one line."""
        if isinstance(exc, AlexnetError):
            return exc
        if isinstance(exc, _Stop):
            if exc.kind == "archive":
                return self.refuse(f"it inflates to more than {ARCHIVE_BYTES.describe(self.limits.archive_bytes)}"
                                   f"{self.at()}; set {ARCHIVE_BYTES.var} to raise the limit")
            if exc.kind == "meta":
                return self.refuse(f"an extended header{self.at()} claims "
                                   f"{exc.value:,} bytes, over {_MAX_META_BYTES:,} (no real archive has one)")
        if isinstance(exc, EOFError):  # from the gzip / bzip2 / xz reader
            return self.error(f"its compressed stream ends early{self.at()}", truncated=True)
        if isinstance(exc, tarfile.ReadError) and "unexpected end" in str(exc):
            return self.error(f"it ends early{self.at()}", truncated=True)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (zlib.error, lzma.LZMAError, gzip.BadGzipFile)) or (
                isinstance(exc, OSError) and "data stream" in reason):
            return self.error(f"its compressed data is damaged{self.at()} ({reason})")
        if isinstance(exc, tarfile.ReadError):
            return self.error(f"not a tar archive ({reason})")
        if isinstance(exc, OSError):
            return self.error(exc.strerror or reason)
        raise exc  # a programming error, not the archive's

    def check(self, info: tarfile.TarInfo, count: int, declared: int) -> str:
        """The member's normalised name, once its name, type and size pass; else raises."""
        raw = info.name
        name = raw.replace("\\", "/")
        parts = member_parts(name)
        if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
            raise self.refuse(f"member {raw!r} points outside the archive (absolute or '..' path)")
        if not (info.isreg() or info.isdir()) or info.issparse():
            kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk() else
                    "a device file" if info.isdev() and not info.isfifo() else "a FIFO" if info.isfifo() else
                    "a sparse file" if info.issparse() else f"of tar type {info.type!r}")
            raise self.refuse(f"member {raw!r} is {kind}; only plain files and folders are read")
        if count > self.limits.members:
            raise self.refuse(f"it holds more than {self.limits.members:,} members (at {raw!r}); "
                              f"set {MEMBERS.var} to raise the limit")
        if info.size > self.limits.member_bytes:
            raise self.refuse(f"member {raw!r} is {MEMBER_BYTES.describe(info.size)}, over the "
                              f"{MEMBER_BYTES.describe(self.limits.member_bytes)} limit per member; "
                              f"set {MEMBER_BYTES.var} to raise it")
        if declared > self.limits.archive_bytes:
            raise self.refuse(f"it inflates to more than {ARCHIVE_BYTES.describe(self.limits.archive_bytes)} "
                              f"(at member {raw!r}); set {ARCHIVE_BYTES.var} to raise the limit")
        while name.startswith("./"):
            name = name[2:]
        return name.rstrip("/")

    def check_end(self) -> None:
        """The walk stopped: only a clean end-of-archive marker is a complete archive."""
        stop = getattr(self.tar, "alexnet_stop", None)
        if stop is None or isinstance(stop, tarfile.EOFHeaderError):
            return
        if isinstance(stop, tarfile.InvalidHeaderError) and self.last_name is not None:
            raise self.refuse(f"member {self.last_name!r} claims a size that does not match its data "
                              f"(what follows it is not a tar header)")
        after = f" after member {self.last_name!r}" if self.last_name else ""
        raise self.error(f"it ends{after} without the end-of-archive marker", truncated=True)

    def drain(self) -> None:
        """Read the padding after the end marker, so a compressed stream's own end and checksum are checked."""
        assert self.stream is not None
        self.stream.rest(_TAIL_BYTES)


def _walk(path: Path, limits: Limits | None, hint: str, fix: str) -> Iterator[Member]:
    walk = _Walk(Path(path), limits or Limits.from_env(), hint, fix)
    try:
        raw = open(walk.path, "rb", buffering=0)  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError as exc:
        raise walk.error(exc.strerror or str(exc)) from None
    with io.BufferedReader(raw, 1 << 16) as buffered:
        count, declared = 0, 0
        try:
            walk.stream = _Forward(_inflater(buffered, walk.path), walk.limits.archive_bytes)
            walk.tar = tarfile.open(fileobj=walk.stream, mode="r:", tarinfo=_CheckedInfo)
            while True:
                info = walk.tar.next()
                if info is None:
                    break
                walk.tar.members.clear()  # a walk in order needs none of them; kept, they grow with the archive
                count += 1
                declared += tarfile.BLOCKSIZE + info.size
                walk.current = Member(walk.check(info, count, declared), info, walk)
                yield walk.current
                walk.last_name, walk.current = walk.current.name, None
            walk.check_end()
            walk.drain()
        except (AlexnetError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - failure() re-raises what is not the archive's fault
            raise walk.failure(exc) from None


def members(path: str | os.PathLike[str], *, limits: Limits | None = None, hint: str = "",
            fix: str = _DEFAULT_FIX) -> Iterator[Member]:
    """Each member of the tar archive at ``path`` (plain, .gz, .bz2 or .xz), checked, in archive order.

    Raises :class:`ArchiveError` (an ``AlexnetError``) on the first member that breaks a rule or a limit,
    or when the archive is damaged or truncated; ``hint`` is added to refusals (e.g. which archive to use
    instead), ``fix`` to read errors. ``limits`` default to the environment's (see ``limits.py``). A walk
    that runs to its end has also checked that the archive ends cleanly.
    """
    return _walk(Path(path), limits, hint, fix)


def first_member(path: str | os.PathLike[str], *, limits: Limits | None = None) -> str | None:
    """The checked name of the archive's first member (file or folder), None for an empty archive."""
    walk = members(path, limits=limits)
    try:
        return next(walk).name
    except StopIteration:
        return None
    finally:
        walk.close()
