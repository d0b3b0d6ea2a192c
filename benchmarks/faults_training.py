"""The training half of the fault suite: signals, kills, a full disk, hostile checkpoints, non-finite losses.

Every trial runs real `alexnet train` processes on a tiny image folder (3 classes, 108 training images,
6 steps an epoch, 2 epochs) and judges the outcome against a run of the same command never disturbed,
tensor by tensor (`torch.equal`: bit-identical on a CPU):

- signal: SIGTERM or SIGINT (the latter to the whole process group, as a terminal's Ctrl-C, decoding
  workers included) at a seeded random step, in-memory and streamed data. Survives when the process exits
  with 75 and one line naming `alexnet train --resume RUN`, last.pt holds a position at or after that step,
  and `--resume` ends with weights and optimiser state equal to the undisturbed run's.
- kill: SIGKILL at a seeded random step plus a random delay, or while a checkpoint is being written (the
  write is slowed so the kill lands inside it), with --save-every-steps 2. Survives when best.pt and last.pt
  load, `--resume` (or the same command again, when nothing was saved yet) ends equal to the undisturbed
  run, and no temp file is left. Data lost: the steps trained again after the kill.
- disk full: the k-th checkpoint write fails with ENOSPC, EROFS or EACCES (a patched torch.save that has
  written part of the file). Survives when the process exits with 74 and one line naming the file and the
  error, the previous last.pt is unchanged and loads, no temp file is left, and `--resume` ends equal.
- hostile checkpoint: last.pt carrying a pickle payload, or weights of the wrong shape. Survives when
  `--resume` and `alexnet evaluate` refuse in one line (exit 2) and the payload never ran.
- non-finite loss: the loss becomes NaN at a random step. Survives when the process exits with 2 and one
  line, and last.pt and best.pt still load and hold a state from before that step.

    run_training_cases(quick, seed) -> [{"case", "trials", "survived", "data_lost", "detail"}, ...]

`python benchmarks/faults_training.py drive [FAULT] -- train ARGS` runs the CLI with one fault injected
(a callback or a patched function); the cases and tests/test_graceful_stop.py use it.
"""

from __future__ import annotations

import argparse
import errno
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
MARK = "FAULTS"
STEPS_PER_EPOCH, EPOCHS = 6, 2
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
FLAGS = ["--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "0.05", "--widths", "8,8,8,8,8", "--no-whiten",
         "--no-report", "--quiet", "--device", "cpu", "--seed", "1", "--val-every", "1"]
LOADERS = {"memory": ["--loader", "memory"], "stream": ["--loader", "stream", "--workers", "1", "--resize", "32"]}
PROCESS_TIMEOUT_S = 300

# ------------------------------------------------------------------------------------------- the driver


def drive(argv: list[str]) -> int:
    """Run `alexnet <argv after -->` in this process with the fault the options before `--` describe."""
    p = argparse.ArgumentParser(prog="faults_training.py drive")
    p.add_argument("--pause-at-step", type=int, help="after global step N (rank 0): print a marker, wait for a "
                                                     "signal")
    p.add_argument("--mark-steps", action="store_true", help="print a marker after every step")
    p.add_argument("--slow-write", type=float, default=0.0, help="seconds each checkpoint write pauses before "
                                                                 "its rename (after a marker)")
    p.add_argument("--fail-write", type=int, help="the K-th checkpoint write (1-based) fails")
    p.add_argument("--errno", default="ENOSPC", help="the error of --fail-write")
    p.add_argument("--nan-after-step", type=int, help="the loss is NaN from the step after global step K")
    split = argv.index("--")
    opts, cli_args = p.parse_args(argv[:split]), argv[split + 1:]

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
            with open(f, "wb") as fh:
                fh.write(b"\x80\x02partial")  # part of a file, as a disk filling up leaves it
            code = getattr(errno, opts.errno)
            raise OSError(code, os.strerror(code))
        real_save(obj, f, *args, **kwargs)
        if opts.slow_write:
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


# ------------------------------------------------------------------------------------------- running it


def tiny_folder(root: Path) -> Path:
    """3 classes x 40 PNGs whose class is a bright colour channel (as tests/conftest.py's)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "ship"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(40):
            img = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
            img[..., c] += 120
            Image.fromarray(img).save(root / name / f"{i:04d}.png")
    return root


def driver_command(fault: list[str], args: list[str]) -> list[str]:
    return [sys.executable, str(HERE), "drive", *fault, "--", *map(str, args)]


class Process:
    """A driven `alexnet` process whose output lines are read as they come (by threads, so no pipe fills)."""

    def __init__(self, fault: list[str], args: list[str], env: dict[str, str]):
        # Its own process group, as a terminal job: a group signal reaches its decoding workers too.
        self.proc = subprocess.Popen(driver_command(fault, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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


def tensors_equal(a: dict, b: dict) -> bool:
    import torch

    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not tensors_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not isinstance(y, torch.Tensor) or x.shape != y.shape or not torch.equal(x, y):
                return False
    return True


def same_final_state(run_dir: Path, reference: Path) -> bool:
    """The weights and the optimiser's buffers of two finished runs are bit-identical."""
    from alexnet.engine.checkpoint import load_checkpoint

    a, b = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    return (a["epoch"] == b["epoch"] == EPOCHS and tensors_equal(a["model"], b["model"])
            and tensors_equal(a["optimizer"]["state"], b["optimizer"]["state"]))


def one_line(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in text


def loads(path: Path) -> dict | None:
    from alexnet.engine.checkpoint import load_checkpoint
    from alexnet.errors import AlexnetError

    try:
        return load_checkpoint(path)
    except AlexnetError:
        return None


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


class Bench:
    """A sandbox: the data, a cache, the undisturbed reference runs; a fresh run folder per trial."""

    def __init__(self, root: Path, seed: int):
        self.root, self.rng = root, random.Random(seed)
        self.data = tiny_folder(root / "data")
        self.env = {**os.environ, "ALEXNET_DATA": str(root / "cache"), "OMP_NUM_THREADS": "1"}
        self.count = 0
        self.references = {}
        for loader in LOADERS:
            out = self.new_dir(f"reference-{loader}")
            done = run([], self.train_args(loader, out), self.env)
            if done.returncode != 0:
                raise RuntimeError(f"the undisturbed {loader} run failed: {done.stderr[-2000:]}")
            self.references[loader] = out

    def new_dir(self, name: str) -> Path:
        self.count += 1
        return self.root / f"{self.count:03d}-{name}"

    def train_args(self, loader: str, out: Path, *extra: str) -> list[str]:
        return ["train", "--data", self.data, "--out", out, *FLAGS, *LOADERS[loader], *extra]

    def resume(self, out: Path) -> subprocess.CompletedProcess:
        return run([], ["train", "--resume", out, "--quiet"], self.env)


def signal_trial(bench: Bench, loader: str, sig: signal.Signals) -> tuple[bool, int, str]:
    out = bench.new_dir(f"{sig.name.lower()}-{loader}")
    step = bench.rng.randint(1, TOTAL_STEPS - 1)
    proc = Process(["--pause-at-step", str(step)], bench.train_args(loader, out), bench.env)
    marker = proc.wait_for(f"{MARK} paused")
    if marker:
        if sig == signal.SIGINT:
            proc.signal_group(sig)  # the whole group, as Ctrl-C in a terminal: decoding workers too
        else:
            proc.proc.send_signal(sig)
    code, _, err = proc.finish()
    saved = loads(out / "last.pt")
    position = saved["global_step"] if saved else -1
    problems = []
    if not marker:
        problems.append("no pause marker")
    if code != 75 or not one_line(err) or f"--resume {out}" not in err:
        problems.append(f"exit {code}: {err.strip()[-200:]}")
    if position < step:
        problems.append(f"last.pt at step {position} < {step}")
    resumed = bench.resume(out)
    if resumed.returncode != 0:
        problems.append(f"resume exit {resumed.returncode}: {resumed.stderr.strip()[-200:]}")
    elif not same_final_state(out, bench.references[loader]):
        problems.append("resumed run differs from the undisturbed one")
    detail = f"{sig.name} at step {step} ({loader}): " + ("; ".join(problems) or f"stopped at step {position}")
    return not problems, max(step - position, 0), detail


def kill_trial(bench: Bench, loader: str, during_write: bool) -> tuple[bool, int, str]:
    out = bench.new_dir(f"kill-{loader}")
    args = bench.train_args(loader, out, "--save-every-steps", "2")
    if during_write:
        fault = ["--mark-steps", "--slow-write", "0.5"]
        nth = bench.rng.randint(1, 4)
        proc = Process(fault, args, bench.env)
        marker = ""
        for _ in range(nth):
            marker = proc.wait_for(f"{MARK} writing")
            if not marker:
                break
        moment = f"during write {nth} ({marker.split()[-1] if marker else 'none'})"
    else:
        step = bench.rng.randint(1, TOTAL_STEPS - 1)
        proc = Process(["--mark-steps"], args, bench.env)
        proc.wait_for(f"{MARK} step {step} ")
        delay = bench.rng.uniform(0.0, 0.3)
        time.sleep(delay)
        moment = f"at step {step} + {delay:.2f}s"
    proc.signal_group(signal.SIGKILL)
    _, printed, _ = proc.finish()
    steps = [int(line.split()[-1]) for line in printed.splitlines() if line.startswith(f"{MARK} step")]
    reached = max(steps) if steps else 0
    problems = []
    last, best = loads(out / "last.pt"), loads(out / "best.pt")
    if (out / "last.pt").exists() and last is None:
        problems.append("last.pt does not load")
    if (out / "best.pt").exists() and best is None:
        problems.append("best.pt does not load")
    if best is not None and last is not None and best["best_val_acc"] < last["best_val_acc"]:
        problems.append("best.pt is older than the best score in last.pt")
    saved = last["global_step"] if last else 0
    again = bench.resume(out) if last is not None else run([], args, bench.env)
    if again.returncode != 0:
        problems.append(f"{'resume' if last else 'rerun'} exit {again.returncode}: {again.stderr.strip()[-200:]}")
    elif not same_final_state(out, bench.references[loader]):
        problems.append("resumed run differs from the undisturbed one")
    if temp_files(out):
        problems.append(f"temp files left: {temp_files(out)}")
    lost = max(reached - saved, 0)
    detail = f"SIGKILL {moment} ({loader}): " + ("; ".join(problems) or f"resumed from step {saved}, {lost} redone")
    return not problems, lost, detail


def disk_full_trial(bench: Bench, loader: str) -> tuple[bool, int, str]:
    out = bench.new_dir(f"disk-{loader}")
    nth = bench.rng.randint(1, 5)  # writes: config.json is not a torch.save; epoch ends write best.pt + last.pt
    name = bench.rng.choice(["ENOSPC", "EROFS", "EACCES"])
    args = bench.train_args(loader, out, "--save-every-steps", "4")
    # The undisturbed run up to the failing write: what last.pt held then is what must be left.
    done = run(["--fail-write", str(nth), "--errno", name], args, bench.env)
    last = loads(out / "last.pt")
    problems = []
    if done.returncode != 74 or not one_line(done.stderr) or name not in done.stderr or ".pt" not in done.stderr:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    if (out / "last.pt").exists() and last is None:
        problems.append("last.pt does not load")
    if temp_files(out):
        problems.append(f"temp files left: {temp_files(out)}")
    again = bench.resume(out) if last is not None else run([], args, bench.env)
    if again.returncode != 0:
        problems.append(f"continue exit {again.returncode}: {again.stderr.strip()[-200:]}")
    elif not same_final_state(out, bench.references[loader]):
        problems.append("continued run differs from the undisturbed one")
    detail = f"{name} on write {nth} ({loader}): " + ("; ".join(problems) or "refused in one line, resumed")
    return not problems, 0, detail


PAYLOAD = """
import os, pickle, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"format": "alexnet-checkpoint", "version": 1, "model": Payload()}}, "{path}")
"""


def hostile_trial(bench: Bench, kind: str) -> tuple[bool, int, str]:
    import torch

    from alexnet.engine.checkpoint import load_checkpoint

    out = bench.new_dir(f"hostile-{kind}")
    shutil.copytree(bench.references["memory"], out)
    marker = out.parent / f"{out.name}-payload-ran"
    if kind == "pickle":
        for name in ("last.pt", "best.pt"):
            code = PAYLOAD.format(marker=marker, path=out / name)
            subprocess.run([sys.executable, "-c", code], check=True, env=bench.env)
    else:
        for name in ("last.pt", "best.pt"):
            ckpt = load_checkpoint(out / name)
            first = next(k for k, v in ckpt["model"].items() if v.ndim == 4)
            ckpt["model"][first] = ckpt["model"][first][:, :, :-1]  # one kernel row short
            torch.save(ckpt, out / name)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    resumed = bench.resume(out)
    evaluated = run([], ["evaluate", out / "best.pt", "--data", bench.data, "--device", "cpu"], bench.env)
    problems = []
    for what, done in (("resume", resumed), ("evaluate", evaluated)):
        if done.returncode != 2 or not one_line(done.stderr):
            problems.append(f"{what} exit {done.returncode}: {done.stderr.strip()[-200:]}")
    if marker.exists():
        problems.append("the pickle payload ran")
    if any((out / name).read_bytes() != data for name, data in before.items()):
        problems.append("a checkpoint was changed")
    detail = f"{kind}: " + ("; ".join(problems) or resumed.stderr.strip()[:160])
    return not problems, 0, detail


def nan_trial(bench: Bench, loader: str) -> tuple[bool, int, str]:
    out = bench.new_dir(f"nan-{loader}")
    after = bench.rng.randint(STEPS_PER_EPOCH, TOTAL_STEPS - 1)  # after the first epoch's checkpoints
    done = run(["--nan-after-step", str(after)], bench.train_args(loader, out, "--save-every-steps", "4"), bench.env)
    last, best = loads(out / "last.pt"), loads(out / "best.pt")
    problems = []
    if done.returncode != 2 or not one_line(done.stderr) or "loss became nan" not in done.stderr:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    if last is None or best is None:
        problems.append("last.pt or best.pt does not load")
    elif last["global_step"] > after:
        problems.append(f"last.pt holds step {last['global_step']}, after the loss turned NaN ({after + 1})")
    detail = f"NaN from step {after + 1} ({loader}): " + ("; ".join(problems) or
                                                        f"stopped, last.pt at step {last['global_step']}")
    return not problems, 0, detail


def summarise(case: str, results: list[tuple[bool, int, str]], lost: str | int) -> dict:
    failed = [d for ok, _, d in results if not ok]
    return {"case": case, "trials": len(results), "survived": sum(ok for ok, _, _ in results), "data_lost": lost,
            "detail": "; ".join(failed[:3]) if failed else results[0][2] + (f" (+{len(results) - 1} more)"
                                                                             if len(results) > 1 else "")}


def run_training_cases(quick: bool, seed: int) -> list[dict]:
    """The training fault cases (see the module docstring), `quick` with fewer trials."""
    with tempfile.TemporaryDirectory(prefix="alexnet-faults-") as tmp:
        bench = Bench(Path(tmp), seed)
        pairs = [("memory", signal.SIGTERM), ("stream", signal.SIGINT), ("memory", signal.SIGINT),
                 ("stream", signal.SIGTERM)]
        signals = [signal_trial(bench, *pairs[i % len(pairs)]) for i in range(4 if quick else 22)]
        kills = [kill_trial(bench, "memory" if i % 2 == 0 else "stream", during_write=i % 2 == 1)
                 for i in range(2 if quick else 8)]
        disks = [disk_full_trial(bench, "memory" if i % 2 == 0 else "stream") for i in range(1 if quick else 4)]
        hostile = [hostile_trial(bench, kind) for kind in ("pickle", "wrong-shape")]
        nans = [nan_trial(bench, loader) for loader in (["memory"] if quick else ["memory", "stream"])]
        redone = [lost for _, lost, _ in kills]
        return [
            summarise("training: SIGTERM/SIGINT mid-epoch, --resume bit-identical", signals,
                      sum(lost for _, lost, _ in signals)),
            summarise("training: SIGKILL (incl. inside a checkpoint write), --resume", kills,
                      f"0 checkpoints; {sum(redone)} steps redone in {len(kills)} kills (saves every 2 steps)"),
            summarise("training: disk full / read-only during a checkpoint write", disks, 0),
            summarise("training: hostile checkpoint (pickle payload, wrong shapes)", hostile, 0),
            summarise("training: non-finite loss", nans, 0),
        ]


def main(argv: list[str]) -> int:
    if argv[:1] == ["drive"]:
        return drive(argv[1:])
    p = argparse.ArgumentParser(description="the training fault cases; prints a table")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = run_training_cases(args.quick, args.seed)
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        print(f"{r['case']:<{width}}  {r['survived']:>3}/{r['trials']:<3}  lost: {r['data_lost']}")
        print(f"{'':<{width}}  {r['detail'][:300]}")
    return 0 if all(r["survived"] == r["trials"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
