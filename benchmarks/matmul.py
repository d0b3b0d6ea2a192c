"""A reference compute rate for the machine a benchmark ran on: dense matmul GFLOP/s.

Timings on shared or throttling machines drift by tens of percent between runs, so every
benchmark measures this rate in the same process, and its results are quoted beside it.
Imported by throughput.py and time_to_accuracy.py; also runnable on its own:

    python benchmarks/matmul.py [--n 2048] [--repeats 7] [--device cpu|cuda] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, repeats: int = 7, device: str | torch.device = "cpu",
                  dtype: str = "fp32") -> dict:
    """Median GFLOP/s of `torch.mm` of two n x n matrices (2 n^3 FLOPs each), after one warm-up.

    fp32 on CUDA is true fp32 (TF32 is switched off for the measurement). Returns
    {"n", "dtype", "repeats", "gflops" (median), "runs" (every measurement), "threads"}.
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=DTYPES[dtype])
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        flops = 2.0 * n ** 3
        torch.mm(a, b)  # warm-up: thread pool start, allocator, cuBLAS handle
        _sync(device)
        runs = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            # On a GPU one product of 2048^2 takes well under a millisecond: time a few back to back.
            inner = 1 if device.type == "cpu" else 10
            for _ in range(inner):
                torch.mm(a, b)
            _sync(device)
            runs.append(inner * flops / (time.perf_counter() - start) / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"n": n, "dtype": dtype, "repeats": repeats, "gflops": statistics.median(runs),
            "runs": [round(r, 2) for r in runs], "threads": torch.get_num_threads(), "device": str(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    a = p.parse_args()
    r = matmul_gflops(a.n, a.repeats, a.device, a.dtype)
    print(f"{r['dtype']} matmul {r['n']}x{r['n']} on {r['device']} ({r['threads']} threads): "
          f"{r['gflops']:.1f} GFLOP/s (median of {r['repeats']}: {r['runs']})")


if __name__ == "__main__":
    main()
