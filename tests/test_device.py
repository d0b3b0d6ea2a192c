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
        pytest.skip("transparent huge pages are always on: the re-fault is a few dozen 2 MB faults, nothing to count")
    assert faults > 8000


# --- mixed precision: which dtype `--amp auto` picks where --------------------------------------------

def test_auto_amp_on_cpu_follows_the_cpus_bf16_instructions(monkeypatch):
    import torch

    from alexnet.engine import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: True)
    assert dev.amp_dtype(cpu, "auto") is torch.bfloat16
    assert dev.amp_dtype(cpu, "off") is None  # --amp off always wins
    with dev.autocast(cpu, "auto"):
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16 and torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: False)
    assert dev.amp_dtype(cpu, "auto") is None  # emulated bf16 is >10x slower: stay in fp32
    assert dev.amp_dtype(cpu, "bf16") is torch.bfloat16  # asked for explicitly
    with dev.autocast(cpu, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_cpu_has_bf16_matches_the_cpu_flags():
    from alexnet.engine.device import cpu_has_bf16

    flags = set()
    if platform.system() == "Linux":
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    assert cpu_has_bf16() is bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


def test_the_recorded_isa_follows_torchs_dispatch():
    # ATEN_CPU_CAPABILITY=default makes torch run its plain kernels on any CPU: the run folder must say so.
    code = "import torch; from alexnet.engine.device import hardware_info; print(hardware_info(torch.device('cpu'))['cpu_isa'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert out.stdout.strip() == "DEFAULT"



FLUSH_CHECK = """
import sys, torch, alexnet
from alexnet.engine.callbacks import Callback
seen = []
class Count(Callback):
    def on_train_begin(self, run):  # a product spread over every thread of the pool
        seen.append(int((torch.full((1_000_000,), 1e-39) * 1.0).count_nonzero()))
alexnet.train(data=sys.argv[1], out=sys.argv[2], epochs=1, batch_size=16, widths=(8, 8, 8, 8, 8), whiten=False,
              device="cpu", report=False, progress=False, flush_denormal=sys.argv[3] == "on", callbacks=[Count()])
print(seen[0])
"""


@pytest.mark.parametrize("flush", ["on", "off"])
def test_training_on_a_cpu_flushes_subnormal_floats_in_every_thread_unless_told_not_to(tiny_folder, tmp_path, flush):
    # 1e-39 is below fp32's smallest normal number (1.18e-38). Flushed, a subnormal operand counts as zero in
    # every thread; IEEE arithmetic keeps all million of them. Two threads, as on the machines the presets
    # are for: a flag set only in the main thread would leave half of them.
    result = subprocess.run([sys.executable, "-c", FLUSH_CHECK, str(tiny_folder / "train"), str(tmp_path / "run"), flush],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "2", "ALEXNET_DATA": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == (0 if flush == "on" else 1_000_000)
