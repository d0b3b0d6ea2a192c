"""Limits on untrusted input: archives and image files, each raised by an environment variable.

Every archive and image the project reads (training data, `alexnet predict`, the HTTP service) is
checked against these before it is inflated or decoded, so a bomb is refused with one line instead of
filling the memory. The defaults pass real datasets and fail bombs:

=========================  ===========  =========================================================
variable                   default      what it bounds
=========================  ===========  =========================================================
ALEXNET_MAX_ARCHIVE_BYTES  16 GiB       everything a tar archive inflates to (headers, members,
                                        padding). Image archives are held in memory while they
                                        are decoded, so this is also their memory. CIFAR-10 (186
                                        MB), Tiny ImageNet, Imagenette, ImageNet's 6.3 GiB val
                                        tarball pass; ImageNet's 138 GB train tarball does not:
                                        unpack it and pass the folder, which is streamed.
ALEXNET_MAX_MEMBER_BYTES   1 GiB        one archive member (a CIFAR batch is 31 MB, a photo a
                                        few MB); checked on the member's header, before reading.
ALEXNET_MAX_MEMBERS        2,000,000    headers in one archive: ImageNet-1k's 1,281,167 training
                                        images and their 1,000 folders pass.
ALEXNET_MAX_IMAGE_PIXELS   89,478,485   width x height of one image, from its header, before
                                        decoding: Pillow's own decompression-bomb threshold
                                        (a 9,459 x 9,459 image), made an error instead of a warning.
ALEXNET_MAX_IMAGE_BYTES    256 MiB      one image file, before it is read: the size of the largest
                                        allowed image stored uncompressed (89,478,485 x 3 bytes).
=========================  ===========  =========================================================

A value is a whole number, optionally with a binary suffix: ``ALEXNET_MAX_ARCHIVE_BYTES=64G``,
``ALEXNET_MAX_IMAGE_PIXELS=200000000``. The variables are read at each use, so a long-running
service or a test can change them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import AlexnetError

__all__ = ["Limit", "ARCHIVE_BYTES", "MEMBER_BYTES", "MEMBERS", "IMAGE_PIXELS", "IMAGE_BYTES", "human_bytes"]

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_VALUE = re.compile(r"\s*([0-9][0-9_,]*)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; whole numbers of a unit lose the decimals ('16 GiB')."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:,} bytes"


@dataclass(frozen=True)
class Limit:
    """One limit: the variable that sets it, its default and the unit it counts ('bytes', 'pixels', ...)."""

    var: str
    default: int
    unit: str

    def get(self) -> int:
        """The limit in force: the variable's value if set, else the default."""
        raw = os.environ.get(self.var, "").strip()
        if not raw:
            return self.default
        match = _VALUE.fullmatch(raw)
        value = int(match.group(1).replace("_", "").replace(",", "")) * _SUFFIXES[match.group(2).upper()] \
            if match else 0
        if value < 1:
            raise AlexnetError(f"{self.var}={raw!r} is not a positive whole number of {self.unit}; "
                               f"set e.g. {self.var}={self.default} (the default) or unset it")
        return value

    def describe(self, value: int) -> str:
        """An amount as a user reads it: '1 GiB' for a whole number of a binary unit, else '4,907 bytes' or
        '89,478,485 pixels'."""
        text = human_bytes(value) if self.unit == "bytes" else ""
        return text if text and "." not in text and "bytes" not in text else f"{value:,} {self.unit}"


ARCHIVE_BYTES = Limit("ALEXNET_MAX_ARCHIVE_BYTES", 16 << 30, "bytes")
MEMBER_BYTES = Limit("ALEXNET_MAX_MEMBER_BYTES", 1 << 30, "bytes")
MEMBERS = Limit("ALEXNET_MAX_MEMBERS", 2_000_000, "members")
IMAGE_PIXELS = Limit("ALEXNET_MAX_IMAGE_PIXELS", 89_478_485, "pixels")
IMAGE_BYTES = Limit("ALEXNET_MAX_IMAGE_BYTES", 256 << 20, "bytes")
