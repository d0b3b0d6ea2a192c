"""What this CPU offers 8-bit arithmetic, read without torch (an onnxruntime service never imports it).

int8 pays where the CPU has 8-bit dot-product instructions: VNNI (AVX512_VNNI, AVX-VNNI) or AMX. On AVX2 alone
the 8-bit kernels multiply with vpmaddubsw, whose 16-bit sums can saturate: onnxruntime's `reduce_range`
(7-bit weights) avoids that at some cost in precision, and the speed-up is smaller.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["INT8_CLASSES", "cpu_flags", "cpu_model", "int8_class", "int8_description"]

# Best first: the class names a config.json records and compares.
INT8_CLASSES = ("amx", "vnni", "avx2", "other")
DESCRIPTIONS = {"amx": "AMX (AMX-INT8 tiles)", "vnni": "VNNI (8-bit dot products)",
                "avx2": "AVX2 without VNNI (8-bit products through 16-bit sums)", "other": "no AVX2"}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in Linux's /proc/cpuinfo ("model name", "flags", ...); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC ..."), else what the platform module says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def int8_class(flags: frozenset[str] | None = None) -> str:
    """"amx", "vnni", "avx2" or "other": what 8-bit arithmetic this CPU has (see the module's doc)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


def int8_description(cls: str) -> str:
    return DESCRIPTIONS.get(cls, cls)
