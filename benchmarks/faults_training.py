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
  run, and no temp file is left. The steps trained again after the kill are counted in the detail.
- disk full: the k-th checkpoint write fails with ENOSPC, EROFS or EACCES (a patched torch.save that has
  written part of the file). Survives when the process exits with 74 and one line naming the file and the
  error, the file it was replacing is unchanged (same bytes), last.pt loads, no temp file is left, and
  `--resume` ends equal.
- hostile checkpoint: last.pt carrying a pickle payload, or weights of the wrong shape. Survives when
  `--resume` and `alexnet evaluate` refuse in one line (exit 2) and the payload never ran.
- non-finite loss: the loss becomes NaN at a random step. Survives when the process exits with 2 and one
  line, and last.pt and best.pt still load and hold a state from before that step.

    run_training_cases(quick, seed) -> [{"case", "trials", "survived", "data_lost", "detail"}, ...]

Data lost counts the trials that lost something saved or trained: a checkpoint that no longer loads or was
changed by a failed write, or (signals) a saved position before the step the signal came at.

The faults are injected by train_with_fault.py (a callback or a patched function in the `alexnet` process).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # imported by faults.py, or run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_with_fault import MARK, Process, driver_command, run  # noqa: E402

STEPS_PER_EPOCH, EPOCHS = 6, 2
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
FLAGS = ["--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "0.05", "--widths", "8,8,8,8,8", "--no-whiten",
         "--no-report", "--quiet", "--device", "cpu", "--seed", "1", "--val-every", "1"]
LOADERS = {"memory": ["--loader", "memory"], "stream": ["--loader", "stream", "--workers", "1", "--resize", "32"]}

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
        self.count, self.redone = 0, 0
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
    proc = Process(driver_command(["--pause-at-step", str(step)], bench.train_args(loader, out)), bench.env)
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
    return not problems, int(position < step), detail


def kill_trial(bench: Bench, loader: str, during_write: bool) -> tuple[bool, int, str]:
    out = bench.new_dir(f"kill-{loader}")
    args = bench.train_args(loader, out, "--save-every-steps", "2")
    if during_write:
        fault = ["--mark-steps", "--slow-write", "0.5"]
        nth = bench.rng.randint(1, 4)
        proc = Process(driver_command(fault, args), bench.env)
        marker = ""
        for _ in range(nth):
            marker = proc.wait_for(f"{MARK} writing")
            if not marker:
                break
        moment = f"during write {nth} ({marker.split()[-1] if marker else 'none'})"
    else:
        step = bench.rng.randint(1, TOTAL_STEPS - 2)
        proc = Process(driver_command(["--mark-steps"], args), bench.env)
        proc.wait_for(f"{MARK} step {step} ")
        delay = bench.rng.uniform(0.0, 0.05)  # a few tiny steps at most: the kill lands before the run's end
        time.sleep(delay)
        moment = f"at step {step} + {delay:.2f}s"
    proc.signal_group(signal.SIGKILL)
    _, printed, _ = proc.finish()
    cut = temp_files(out)  # a write the kill cut short leaves its temp file
    steps = [int(line.split()[-1]) for line in printed.splitlines() if line.startswith(f"{MARK} step")]
    reached = max(steps) if steps else 0
    problems = []
    last, best = loads(out / "last.pt"), loads(out / "best.pt")
    broken = [name for name, ckpt in (("last.pt", last), ("best.pt", best)) if (out / name).exists() and ckpt is None]
    problems += [f"{name} does not load" for name in broken]
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
    redone = max(reached - saved, 0)
    bench.redone += redone
    cut_text = f", its temp file {cut[0]} removed" if cut else ""
    detail = f"SIGKILL {moment} ({loader}): " + ("; ".join(problems) or
                                                f"resumed from step {saved}, {redone} redone{cut_text}")
    return not problems, int(bool(broken)), detail


def disk_full_trial(bench: Bench, loader: str) -> tuple[bool, int, str]:
    out = bench.new_dir(f"disk-{loader}")
    nth = bench.rng.randint(1, 5)  # writes: config.json is not a torch.save; epoch ends write best.pt + last.pt
    name = bench.rng.choice(["ENOSPC", "EROFS", "EACCES"])
    args = bench.train_args(loader, out, "--save-every-steps", "4")
    done = run(["--fail-write", str(nth), "--errno", name], args, bench.env)
    last = loads(out / "last.pt")
    problems, lost = [], 0
    failing = [line.split() for line in done.stdout.splitlines() if line.startswith(f"{MARK} failing")]
    if not failing:
        problems.append("the write never failed")
    else:
        target, held = out / failing[0][2], failing[0][3]
        now = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else "none"
        if now != held:
            problems.append(f"{target.name} changed by the failed write")
            lost = 1
    if done.returncode != 74 or not one_line(done.stderr) or name not in done.stderr or ".pt" not in done.stderr:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    if (out / "last.pt").exists() and last is None:
        problems.append("last.pt does not load")
        lost = 1
    if temp_files(out):
        problems.append(f"temp files left: {temp_files(out)}")
    again = bench.resume(out) if last is not None else run([], args, bench.env)
    if again.returncode != 0:
        problems.append(f"continue exit {again.returncode}: {again.stderr.strip()[-200:]}")
    elif not same_final_state(out, bench.references[loader]):
        problems.append("continued run differs from the undisturbed one")
    detail = f"{name} on write {nth} ({loader}): " + ("; ".join(problems) or "refused in one line, continued")
    return not problems, lost, detail


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
    changed = any((out / name).read_bytes() != data for name, data in before.items())
    if changed:
        problems.append("a checkpoint was changed")
    detail = f"{kind}: " + ("; ".join(problems) or resumed.stderr.strip()[:160])
    return not problems, int(changed), detail


def nan_trial(bench: Bench, loader: str) -> tuple[bool, int, str]:
    out = bench.new_dir(f"nan-{loader}")
    after = bench.rng.randint(STEPS_PER_EPOCH, TOTAL_STEPS - 1)  # after the first epoch's checkpoints
    done = run(["--nan-after-step", str(after)], bench.train_args(loader, out, "--save-every-steps", "4"), bench.env)
    last, best = loads(out / "last.pt"), loads(out / "best.pt")
    problems = []
    if done.returncode != 2 or not one_line(done.stderr) or "loss became nan" not in done.stderr:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    broken = last is None or best is None
    if broken:
        problems.append("last.pt or best.pt does not load")
    elif last["global_step"] > after:
        problems.append(f"last.pt holds step {last['global_step']}, after the loss turned NaN ({after + 1})")
    detail = f"NaN from step {after + 1} ({loader}): " + ("; ".join(problems) or
                                                        f"stopped, last.pt at step {last['global_step']}")
    return not problems, int(broken), detail


def summarise(case: str, results: list[tuple[bool, int, str]], note: str = "") -> dict:
    failed = [d for ok, _, d in results if not ok]
    more = f" (+{len(results) - 1} more)" if len(results) > 1 else ""
    return {"case": case, "trials": len(results), "survived": sum(ok for ok, _, _ in results),
            "data_lost": sum(lost for _, lost, _ in results),
            "detail": note + ("; ".join(failed[:3]) if failed else results[0][2] + more)}


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
        return [
            summarise("training: SIGTERM/SIGINT mid-epoch, --resume bit-identical", signals),
            summarise("training: SIGKILL (incl. inside a checkpoint write), --resume", kills,
                      f"{bench.redone} steps trained again in {len(kills)} kills (saves every 2 steps); "),
            summarise("training: disk full / read-only during a checkpoint write", disks),
            summarise("training: hostile checkpoint (pickle payload, wrong shapes)", hostile),
            summarise("training: non-finite loss", nans),
        ]


def main(argv: list[str]) -> int:
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
