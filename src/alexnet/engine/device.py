"""Device choice and mixed precision, in one place so every path (train, evaluate, predict) agrees."""

from __future__ import annotations

import contextlib
import platform

import torch

from ..errors import AlexnetError


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


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA by default (fp16 on GPUs without bf16), none on CPU/MPS.

    Off on CPU by default: a CPU without bf16 units (like the 2-core dev box) runs it >10x slower.
    """
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str = "auto") -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, amp) == torch.float16)


def hardware_info(device: torch.device) -> dict[str, str]:
    """What a run ran on, for config.json and the report."""
    info = {"device": str(device), "platform": platform.platform(), "processor": platform.processor() or "",
            "cpu_threads": str(torch.get_num_threads())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict[str, str]:
    import numpy
    import PIL

    from .. import __version__
    return {"alexnet": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__, "python": platform.python_version()}
