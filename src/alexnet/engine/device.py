"""Device choice and mixed precision, in one place so every path (train, evaluate, predict) agrees."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform

import numpy
import PIL
import torch

from ..errors import AlexnetError
from ..version import __version__


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AlexnetError(f"--device {name}: CUDA is not available here; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AlexnetError("--device mps: MPS is not available here; use --device auto or cpu")
    return torch.device(name)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt() parameter numbers (malloc.h)
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS (glibc only).

    By default glibc serves every block above ~32 MB with a fresh mmap and unmaps it on free, so each
    training step page-faults its activations in again: on the 2-core box that made ReLU and batch-norm
    passes cost more than the convolutions (1,139 img/s for the narrow CIFAR net; 1,843 img/s with this,
    see benchmarks/NOTES.md). Turning mmap off and raising the trim threshold lets freed blocks be reused.
    The process then keeps its peak heap until exit, which is what a training process wants anyway.
    Returns whether it was applied; ALEXNET_MALLOC_TUNE=0 turns it off. Safe to call more than once.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("ALEXNET_MALLOC_TUNE", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # mallopt returns 1 on success, 0 on error.
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        _allocator_tuned = False
    return _allocator_tuned


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX tiles), so that oneDNN's bf16
    convolutions run faster than fp32 ones instead of emulating bf16 slowly. Asked once per process:
    `amp_dtype` runs at every training step."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not torch.backends.mkldnn.is_available():  # no oneDNN: bf16 convolutions take slow reference kernels
        return False
    try:
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    except RuntimeError:
        return False


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype. auto: bf16 on CUDA (fp16 on GPUs without bf16); on CPU, bf16 where the CPU has
    bf16 instructions and none otherwise; none on MPS.

    A CPU with AVX512_BF16 ran `cifar10-best`'s training step 1.9x faster under bf16 autocast; one without
    bf16 units (a 2-core AVX2-only CPU) ran it >10x slower, so there it stays off (benchmarks/NOTES.md).
    """
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "auto" and device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision(device: torch.device, amp: str = "auto") -> str:
    """The arithmetic `amp` resolves to on `device`: "bf16", "fp16" or "fp32" (for run folders and benchmarks:
    `--amp auto` means different things on different CPUs)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(device, amp), "fp32")


def autocast(device: torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str = "auto") -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, amp) == torch.float16)


def cpu_isa() -> str:
    """The vector ISA torch's CPU kernels dispatch to ('AVX512', 'AVX2', ...): CPUs that report the same
    model name can differ here, and convolution speed with it."""
    return torch.backends.cpu.get_cpu_capability()


def hardware_info(device: torch.device) -> dict[str, str]:
    """What a run ran on, for config.json and the report."""
    info = {"device": str(device), "platform": platform.platform(), "processor": platform.processor() or "",
            "cpu_isa": cpu_isa(),
            "cpu_threads": str(torch.get_num_threads()), "malloc_tuned": str(bool(_allocator_tuned))}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict[str, str]:
    return {"alexnet": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__, "python": platform.python_version()}
