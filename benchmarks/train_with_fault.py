"""Run `alexnet` with one fault injected, for the fault suite (faults_training.py) and the tests.

    python benchmarks/train_with_fault.py [FAULT OPTIONS] -- train ARGS...

The faults: a pause after a step until a signal arrives (the caller sends it at a known step), a marker line
after every step, checkpoint writes slowed down (to kill a process inside one) or failing with an OSError
(a full or read-only disk), a loss that turns NaN. Markers go to stdout as "FAULTS ..." lines; `Process`
starts such a run and reads them as they come.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
MARK = "FAULTS"
PROCESS_TIMEOUT_S = 300


def drive(argv: list[str]) -> int:
    """Run `alexnet <argv after -->` in this process with the fault the options before `--` describe."""
    p = argparse.ArgumentParser(prog="train_with_fault.py")
    p.add_argument("--pause-at-step", type=int, help="after global step N (rank 0): print a marker, wait for a "
                                                     "signal")
    p.add_argument("--mark-steps", action="store_true", help="print a marker after every step")
    p.add_argument("--slow-write", type=float, default=0.0, help="seconds each checkpoint write pauses before "
                                                                 "its rename (after a marker)")
    p.add_argument("--slow-from", type=int, default=1, help="--slow-write from the K-th checkpoint write on")
    p.add_argument("--fail-write", type=int, help="the K-th checkpoint write (1-based) fails")
    p.add_argument("--errno", default="ENOSPC", help="the error of --fail-write")
    p.add_argument("--nan-after-step", type=int, help="the loss is NaN from the step after global step K")
    split = argv.index("--") if "--" in argv else -1  # torchrun drops a "--" that comes first
    opts, cli_args = p.parse_args(argv[:max(split, 0)]), argv[split + 1:]

    import torch
    import torch.nn.functional as F

    import alexnet.api as api
    from alexnet.cli import main
    from alexnet.engine.callbacks import Callback

    steps = {"done": 0}

    class Fault(Callback):
        def on_step_end(self, run, step, logs):
            steps["done"] = logs["global_step"]
            if not run.info.is_main:
                return
            if opts.mark_steps:
                print(f"{MARK} step {logs['global_step']} ", flush=True)  # a space ends the number
            if logs["global_step"] == opts.pause_at_step:
                print(f"{MARK} paused {logs['global_step']}", flush=True)
                deadline = time.monotonic() + 120
                while run.stop_signal is None and time.monotonic() < deadline:
                    time.sleep(0.01)

    real_train = api.train

    def train_with_fault(*args, **kwargs):
        kwargs["callbacks"] = (*kwargs.get("callbacks", ()), Fault())
        return real_train(*args, **kwargs)

    api.train = train_with_fault
    real_save, writes = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        writes["n"] += 1
        if opts.fail_write == writes["n"]:
            target = Path(f).parent / Path(f).name[1:].rsplit(".", 2)[0]  # ".last.pt.k3j2.tmp" -> last.pt
            held = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else "none"
            print(f"{MARK} failing {target.name} {held}", flush=True)
            with open(f, "wb") as fh:
                fh.write(b"\x80\x02partial")  # part of a file, as a disk filling up leaves it
            code = getattr(errno, opts.errno)
            raise OSError(code, os.strerror(code))
        real_save(obj, f, *args, **kwargs)
        if opts.slow_write and writes["n"] >= opts.slow_from:
            print(f"{MARK} writing {Path(f).name}", flush=True)
            time.sleep(opts.slow_write)

    torch.save = save
    if opts.nan_after_step is not None:
        real_ce = F.cross_entropy

        def cross_entropy(*args, **kwargs):
            loss = real_ce(*args, **kwargs)
            return loss * float("nan") if steps["done"] >= opts.nan_after_step else loss

        F.cross_entropy = cross_entropy
    return main(cli_args)


def driver_command(fault: list[str], args: list[str]) -> list[str]:
    return [sys.executable, str(HERE), *fault, "--", *map(str, args)]


class Process:
    """A driven `alexnet` process whose output lines are read as they come (by threads, so no pipe fills)."""

    def __init__(self, command: list[str], env: dict[str, str]):
        # Its own process group, as a terminal job: a group signal reaches its decoding workers too.
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, into: list[str], feed: bool) -> None:
        for line in stream:
            into.append(line)
            if feed:
                self.lines.put(line)
        if feed:
            self.lines.put(None)

    def wait_for(self, prefix: str) -> str:
        """The next stdout line starting with `prefix` ("" if the process ended first, or after the timeout)."""
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                return ""
            if line.startswith(prefix):
                return line.strip()
        return ""

    def signal_group(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=PROCESS_TIMEOUT_S)
        for reader in self.readers:
            reader.join(timeout=10)
        return code, "".join(self.out), "".join(self.err)


def run(fault: list[str], args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(driver_command(fault, args), capture_output=True, text=True, env=env,
                          timeout=PROCESS_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(drive(sys.argv[1:]))
