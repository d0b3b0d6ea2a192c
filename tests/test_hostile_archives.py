"""Hostile tarballs are refused with one line naming the archive, the member and the rule or limit.

Image archives (`--data images.tar.gz`, read in memory) and the CIFAR-10 python archive (extracted into
the data folder) walk the same checked reader; each case is tried through the path a user takes.
The archives are written block by block, so they can lie the way a hand-made one can.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from alexnet.data import archive
from alexnet.data.cifar10 import FOLDER, safe_extract
from alexnet.data.sources import load_splits
from alexnet.errors import AlexnetError

END = b"\0" * 1024  # the end-of-archive marker: two zero blocks
MiB = 1 << 20


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None,
          fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One header and its data, padded to whole blocks; ``size`` may lie about the data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if size is None else size
    return info.tobuf(fmt) + data + b"\0" * (-len(data) % 512)


GOOD = (entry("train/cat/0.png", png_bytes((200, 0, 0))) + entry("train/cat/1.png", png_bytes((210, 0, 0)))
        + entry("train/dog/0.png", png_bytes((0, 200, 0))) + entry("train/dog/1.png", png_bytes((0, 210, 0))))


def zeros_gz(mib: int) -> bytes:
    """``mib`` MiB of zeros as concatenated gzip members (a valid gzip stream; ~1 KB per MiB)."""
    return gzip.compress(b"\0" * MiB) * mib


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """``data`` (tar blocks, or already gzip-compressed) as ``name``; a .tar.gz gets compressed tar blocks."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".tar.gz") and data[:2] != b"\x1f\x8b" else data)
    return path


def refused(path: Path, *fragments: str) -> str:
    """Read ``path`` as training data; it must fail with one line naming it and each fragment."""
    with pytest.raises(AlexnetError) as info:
        load_splits(str(path), 0.0, 0, cache_dir=str(path.parent / "cache"))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_well_formed_archive_written_this_way_is_read(tmp_path):
    # The control for every case below: the same writer, honest.
    path = write(tmp_path, "good.tar.gz", GOOD + END)
    splits = load_splits(str(path), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 4
    assert sorted(splits.train.images[:, 0, 0, 0].tolist()) == [0, 0, 200, 210]


@pytest.mark.parametrize("name", ["../escape.png", "train/../../escape.png", "/tmp/alexnet-escape.png",
                                  "C:/escape.png", "train\\..\\..\\escape.png"])
def test_a_member_pointing_outside_is_refused(tmp_path, name):
    path = write(tmp_path, "evil.tar.gz", GOOD + entry(name, png_bytes((1, 2, 3))) + END)
    refused(path, f"member {name!r} points outside the archive")
    assert not (tmp_path.parent / "escape.png").exists() and not Path("/tmp/alexnet-escape.png").exists()


@pytest.mark.parametrize("kind, link, said", [
    (tarfile.SYMTYPE, "/etc/passwd", "is a symbolic link"),
    (tarfile.LNKTYPE, "train/cat/0.png", "is a hard link"),
    (tarfile.CHRTYPE, "", "is a device file"),
    (tarfile.BLKTYPE, "", "is a device file"),
    (tarfile.FIFOTYPE, "", "is a FIFO"),
])
def test_links_devices_and_fifos_are_refused(tmp_path, kind, link, said):
    path = write(tmp_path, "evil.tar.gz", GOOD + entry("train/cat/x.png", kind=kind, link=link) + END)
    refused(path, f"member 'train/cat/x.png' {said}; only plain files and folders are read")


def test_a_member_whose_size_field_is_too_small_is_refused_not_the_rest_dropped(tmp_path):
    lying = entry("train/cat/2.png", b"y" * 3000, size=10)  # its data runs on for blocks past its 10 bytes
    path = write(tmp_path, "short.tar.gz", entry("train/cat/0.png", png_bytes((200, 0, 0))) + lying + GOOD[1024:] + END)
    with tarfile.open(path) as tar:  # Python's tarfile alone stops at the junk block, silently
        assert tar.getnames() == ["train/cat/0.png", "train/cat/2.png"]
    refused(path, "member 'train/cat/2.png' claims a size that does not match its data")


@pytest.mark.parametrize("name", ["train/cat/long.png", "train/notes.txt"], ids=["read", "skipped"])
def test_a_member_claiming_more_than_the_archive_holds_is_truncated(tmp_path, name):
    path = write(tmp_path, "long.tar.gz", GOOD + entry(name, b"x" * 100, size=50_000) + END)
    refused(path, "(truncated)", f"member {name!r}")


def test_a_cut_archive_without_its_end_marker_is_truncated(tmp_path):
    path = write(tmp_path, "cut.tar.gz", GOOD)  # ends on a member boundary: only the marker tells
    refused(path, "ends after member 'train/dog/1.png' without the end-of-archive marker (truncated)")
    whole = gzip.compress(GOOD + END)
    refused(write(tmp_path, "cut-trailer.tar.gz", whole[:-4]), "(truncated)")  # the gzip trailer is missing
    refused(write(tmp_path, "cut-half.tar.gz", whole[: len(whole) // 2]), "(truncated)")


def test_a_zip_passed_as_data_is_named_as_such(tmp_path):
    import zipfile

    path = tmp_path / "images.tar.gz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train/cat/0.png", png_bytes((1, 1, 1)))
    refused(path, "it is a zip file; pack the folder as a tar archive")


# --- limits: each named with the variable that raises it -------------------------------------------------

PROBE = """
import resource, sys
from pathlib import Path
from alexnet.data.archive import read_members
from alexnet.errors import AlexnetError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    print(len(read_members(Path(sys.argv[1]))), "members")
except AlexnetError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def probe(path: Path, **env: str) -> tuple[str, int]:
    """Read the archive in a fresh process: (its one line of outcome, peak memory growth in MiB)."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    line, growth = out.stdout.strip().splitlines()
    return line, int(growth)


def test_a_gzip_bomb_member_is_refused_on_its_header_without_inflating(tmp_path):
    # 2 GiB of zeros in 2 MB, declared honestly in the member's header.
    bomb = gzip.compress(entry("train/cat/0.png", size=2 << 30)[:512]) + zeros_gz(2048)
    path = write(tmp_path, "bomb.tar.gz", bomb)
    assert path.stat().st_size < 4 * MiB
    line, growth = probe(path)
    assert line == (f"refusing {path}: member 'train/cat/0.png' is 2 GiB, over the 1 GiB limit per member; "
                    "set ALEXNET_MAX_MEMBER_BYTES to raise it")
    assert growth < 16  # MiB: nothing was inflated


def test_members_under_the_member_limit_stop_at_the_archive_limit_with_bounded_memory(tmp_path):
    # Six 24 MiB members of zeros (an image's name each, so they would be held) against a 64 MiB limit.
    parts = [gzip.compress(entry(f"train/c{k % 2}/{k}.png", size=24 * MiB)[:512]) + zeros_gz(24) for k in range(6)]
    path = write(tmp_path, "bomb.tar.gz", b"".join(parts))
    line, growth = probe(path, ALEXNET_MAX_ARCHIVE_BYTES="64M")
    assert line.startswith(f"refusing {path}: it inflates to more than 64 MiB")
    assert line.endswith("set ALEXNET_MAX_ARCHIVE_BYTES to raise the limit")
    assert growth < 64 + 32  # the limit, and a buffer: never the 144 MiB the archive holds


def test_a_member_lying_about_its_size_is_refused_without_reading_on(tmp_path):
    # A header declaring 1,000 bytes, then 80 MiB of data: the block after the declared end is no header.
    ones = gzip.compress(b"\1" * MiB) * 80
    lying = gzip.compress(entry("train/cat/0.png", size=1000)[:512]) + ones
    line, growth = probe(write(tmp_path, "liar.tar.gz", lying))
    assert line == (f"refusing {tmp_path / 'liar.tar.gz'}: member 'train/cat/0.png' claims a size that does not "
                    "match its data (what follows it is not a tar header)")
    assert growth < 16


def test_an_extended_header_bomb_is_refused_before_tarfile_reads_it(tmp_path):
    pax = entry("././@PaxHeader", kind=tarfile.XHDTYPE, size=512 * MiB, fmt=tarfile.USTAR_FORMAT)[:512]
    path = write(tmp_path, "pax.tar.gz", gzip.compress(GOOD + pax) + zeros_gz(512))
    line, growth = probe(path)
    assert line == (f"refusing {path}: an extended header after member 'train/dog/1.png' claims "
                    "536,870,912 bytes, over 1,048,576 (no real archive has one)")
    assert growth < 16


def test_the_member_count_limit_is_named_and_can_be_raised(tmp_path, monkeypatch):
    path = write(tmp_path, "many.tar.gz", GOOD + END)
    monkeypatch.setenv("ALEXNET_MAX_MEMBERS", "3")
    refused(path, "holds more than 3 members (at 'train/dog/1.png'); set ALEXNET_MAX_MEMBERS to raise the limit")
    monkeypatch.setenv("ALEXNET_MAX_MEMBERS", "4")
    assert len(load_splits(str(path), 0.0, 0, cache_dir=str(tmp_path / "cache")).train) == 4


def test_the_member_size_limit_is_named_and_can_be_raised(tmp_path, monkeypatch):
    big = png_bytes((5, 5, 5)) + b"\0" * 2000  # a valid PNG with trailing bytes: 2,000-odd bytes
    path = write(tmp_path, "big.tar.gz", GOOD + entry("train/dog/big.png", big) + END)
    monkeypatch.setenv("ALEXNET_MAX_MEMBER_BYTES", "2K")
    refused(path, f"member 'train/dog/big.png' is {len(big):,} bytes, over the 2 KiB limit per member; "
                  "set ALEXNET_MAX_MEMBER_BYTES to raise it")
    monkeypatch.setenv("ALEXNET_MAX_MEMBER_BYTES", "3K")
    assert len(load_splits(str(path), 0.0, 0, cache_dir=str(tmp_path / "cache")).train) == 5


def test_the_image_archive_cache_is_the_only_thing_written(tmp_path):
    path = write(tmp_path, "good.tar.gz", gzip.compress(GOOD + END))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    load_splits(str(path), 0.0, 0, cache_dir=str(tmp_path / "cache"))
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] == [Path("cache"), Path("cache/archives"),
                                                     *[p for p in after if p.parent == Path("cache/archives")]]
    assert len(list((tmp_path / "cache" / "archives").iterdir())) == 1


# --- the CIFAR-10 archive goes through the same walk -------------------------------------------------------


@pytest.mark.parametrize("extra, said", [
    (entry(f"{FOLDER}/../../escape", b"x"), "points outside the archive"),
    (entry(f"{FOLDER}/data_batch_1", kind=tarfile.SYMTYPE, link="/etc/passwd"), "is a symbolic link"),
    (entry(f"{FOLDER}/data_batch_1", b"y" * 3000, size=10), "claims a size that does not match its data"),
])
def test_the_cifar_archive_refuses_the_same_way_and_writes_nothing(tmp_path, extra, said):
    path = write(tmp_path, "cifar-10-python.tar.gz",
                 entry(FOLDER, kind=tarfile.DIRTYPE) + extra + entry(f"{FOLDER}/batches.meta", b"m") + END)
    dest = tmp_path / "data"
    with pytest.raises(AlexnetError, match=said) as info:
        safe_extract(path, dest)
    assert str(path) in str(info.value) and "use the official cifar-10-python.tar.gz" in str(info.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape").exists()


def test_the_cifar_archive_is_recognised_from_its_first_member_only(tmp_path):
    # The check that routes --data to the CIFAR reader reads one header, not the archive.
    path = write(tmp_path, "c.tar.gz", gzip.compress(entry(FOLDER, kind=tarfile.DIRTYPE)[:512]) + zeros_gz(64))
    assert archive.is_cifar_archive(path)
    assert not archive.is_cifar_archive(write(tmp_path, "i.tar.gz", GOOD + END))
