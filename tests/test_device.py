"""The CPU allocator tweak: applied on glibc, off on request, and it really stops re-faulting big buffers."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
from alexnet.engine.device import tune_cpu_allocator
tuned = tune_cpu_allocator()
assert tune_cpu_allocator() == tuned  # idempotent
def faults_of_one_step():
    x = torch.empty(64 * 2**20 // 4)  # 64 MB: above glibc's largest mmap threshold
    x.fill_(1.0)
    del x
for _ in range(12):  # warm up: the heap grows (aligned blocks need a few rounds to coalesce), then stays
    faults_of_one_step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
faults_of_one_step()
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_linux = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="the tweak is for glibc's malloc")


def probe(env_value: str | None) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_MALLOC_TUNE"}
    if env_value is not None:
        env["ALEXNET_MALLOC_TUNE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return int(tuned), int(faults)


@glibc_linux
def test_tuned_allocator_reuses_big_blocks_without_page_faults():
    tuned, faults = probe(None)
    assert tuned == 1
    assert faults < 1000  # 64 MB re-faulted would be ~16,000 faults of 4 KiB pages


@glibc_linux
def test_opt_out_keeps_glibc_default_which_refaults():
    tuned, faults = probe("0")
    assert tuned == 0
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(thp) and "[always]" in open(thp).read():
        return  # 2 MB pages: the re-fault is a few dozen faults, nothing to count
    assert faults > 8000
