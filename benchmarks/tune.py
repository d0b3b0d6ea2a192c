"""`alexnet tune` with ASHA against no pruning at equal wall clock, and the tuned config against the preset.

1. An ASHA study (`alexnet tune --pruner asha`) of --trials trials, each with the preset's time budget
   (--time-limit-per-trial, default the preset's own `time_limit`: 58 s for cifar10-fast). Its wall time,
   process start to exit, is the budget of step 2.
2. A study without pruning (`--pruner none`) in that same wall time: `alexnet tune` has no time budget of its
   own, so it runs with a --trials it cannot reach, and the benchmark sends SIGTERM (the command's graceful
   stop, exit 75) as soon as the next trial would not finish inside the budget (the mean time between
   finished trials so far, the time limit before the first), or at the budget at the latest. Only finished
   trials (COMPLETE or PRUNED in trials.json) count.
3. The preset as it is, `alexnet train --data D --preset P --seed S`, and each study's best config,
   `alexnet train --config DIR/best.toml --seed S --val-every 0`, for the same seeds (default 0 1 2), so the
   comparison is seed to seed. A trial validates after every epoch (the pruner needs the scores); the retrain
   validates once at the end as the preset does, so that both spend the same clock on training and are
   scored the same way. Each run's best validation accuracy comes from its history.json.

Then: the best validation accuracy each study found, finished trials per hour, mean ± std (sample) over the
seeds, and whether a tuned config beats the preset by more than the seed-to-seed spread (the larger of the
two standard deviations). The fp32 matmul rate (benchmarks/matmul.py) is measured before and after.

    python benchmarks/tune.py --data cifar10-jpeg.tar.gz
    python benchmarks/tune.py --data cifar10-jpeg.tar.gz --trials 12 --seeds 0 1 2 3 4
    python benchmarks/tune.py --quick --data small_folder     # smoke test: numbers mean nothing

Trials read the data cache as `alexnet train` does ($ALEXNET_DATA or ~/.cache/alexnet): fill it first (one
`alexnet train --data D` run) so that the first study does not pay for decoding the data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from matmul import matmul_gflops  # noqa: E402
from throughput import git_commit, host_info, host_name, machine_tag, resolve_device  # noqa: E402

FINISHED = ("COMPLETE", "PRUNED")
# `alexnet tune --quiet` prints one of these when a trial ends (study.py's objective).
TRIAL_END = re.compile(r"^trial (\d+): (?:[\d.]+% best validation accuracy|pruned after epoch|.*\(pruned\))")
TRIAL_SECONDS = re.compile(r"([\d.]+)s\)\s*$")  # the seconds that line ends with
# --quick: a tiny network and two epochs, so that the whole script runs in a minute or two.
QUICK_SPACE = "[model]\nwidths = [8, 16, 32, 32, 32]\n\n[train]\nepochs = 2\nbatch_size = 32\n"
QUICK_TRAIN = ["--widths", "8,16,32,32,32", "--epochs", "2", "--batch-size", "32"]
# The retrain is scored as the preset is: one validation, after the last epoch.
RETRAIN_FLAGS = ["--val-every", "0"]


# ---------------------------------------------------------------- the summary's arithmetic

def trials_per_hour(finished: int, wall_s: float) -> float:
    """Finished trials per hour of wall clock."""
    return finished * 3600.0 / wall_s if wall_s > 0 else float("nan")


def launch_next(elapsed_s: float, durations_s: list[float], budget_s: float, fallback_s: float) -> bool:
    """Whether a trial started now would end inside the budget: it is expected to take the mean of the
    trials so far, or `fallback_s` (the time limit per trial) before any has finished."""
    expected = statistics.fmean(durations_s) if durations_s else fallback_s
    return elapsed_s + expected <= budget_s


def trial_durations(ends_s: list[float], reported_s: list[float]) -> list[float]:
    """Seconds per trial so far, from the times (since the process started) at which trials ended: the gaps
    between ends, which include the work between trials. The first end also holds the process's start-up, so
    before a second trial has ended the trials' own reported seconds stand in."""
    gaps = [b - a for a, b in zip(ends_s, ends_s[1:])]
    return gaps or list(reported_s)


def mean_std(values: list[float]) -> dict:
    """n, mean and sample standard deviation (0 for one value); n 0 alone for none."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def verdict(tuned: list[float], preset: list[float]) -> dict:
    """The tuned config against the preset, seed for seed: the difference of the means, the spread (the
    larger of the two sample standard deviations) and whether the difference exceeds it."""
    t, p = mean_std(tuned), mean_std(preset)
    if not t["n"] or not p["n"]:
        return {"difference": None, "spread": None, "beats": None}
    diff, spread = t["mean"] - p["mean"], max(t["std"], p["std"])
    return {"difference": diff, "spread": spread, "beats": diff > spread}


def best_finished(rows: list[dict]) -> dict | None:
    """The study's best trial: the COMPLETE trial with the highest best validation accuracy (best.toml's)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("best_val_acc") is not None]
    return max(done, key=lambda r: (r["best_val_acc"], -r["number"])) if done else None


def best_val_acc(history: list[dict]) -> float | None:
    """The best validation accuracy of a run's history.json (epochs that were not validated have none)."""
    accs = [h["val_acc"] for h in history if h.get("val_acc") is not None and h["val_acc"] == h["val_acc"]]
    return max(accs) if accs else None


# ---------------------------------------------------------------- running the studies and the runs

def alexnet_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "alexnet", *map(str, args)]


def run_study(name: str, args: argparse.Namespace, out: Path, trials: int, pruner: str,
              budget_s: float | None = None) -> dict:
    """One `alexnet tune` process to its end (or, with `budget_s`, stopped by SIGTERM inside the budget)."""
    cmd = alexnet_cmd("tune", "--data", args.data, "--preset", args.preset, "--trials", trials,
                      "--time-limit-per-trial", args.time_limit_per_trial, "--pruner", pruner,
                      "--sampler", args.sampler, "--seed", args.study_seed, "--out", out, "--quiet")
    if args.space:
        cmd += ["--space", args.space]
    log = out.parent / f"{name}.log"
    lines: queue.Queue = queue.Queue()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=args.env)

    def read() -> None:
        for line in proc.stdout:
            lines.put((time.perf_counter(), line))
        lines.put((time.perf_counter(), None))

    threading.Thread(target=read, daemon=True).start()
    ends, reported, signalled, done = [], [], None, False
    with open(log, "w") as f:
        while not done:
            try:
                stamp, line = lines.get(timeout=0.5)
            except queue.Empty:
                stamp, line = time.perf_counter(), ""
            if line is None:
                done = True
                continue
            f.write(line)
            if line.startswith(("trial ", "study ")):
                print(f"  {name}: {line.rstrip()}", flush=True)
            if budget_s is None or signalled is not None:
                continue
            elapsed = stamp - start
            fresh_end = bool(line) and TRIAL_END.match(line) is not None
            if fresh_end:
                ends.append(elapsed)
                m = TRIAL_SECONDS.search(line)
                if m:
                    reported.append(float(m.group(1)))
            if elapsed >= budget_s or (fresh_end and not launch_next(elapsed, trial_durations(ends, reported),
                                                                     budget_s, args.time_limit_per_trial)):
                proc.send_signal(signal.SIGTERM)
                signalled = elapsed
                print(f"  {name}: SIGTERM at {elapsed:.1f} s of the {budget_s:.1f} s budget", flush=True)
    proc.wait()
    wall = time.perf_counter() - start
    rows = json.loads((out / "trials.json").read_text()) if (out / "trials.json").exists() else []
    finished = [r for r in rows if r["state"] in FINISHED]
    best = best_finished(rows)
    return {"name": name, "pruner": pruner, "command": cmd[1:], "returncode": proc.returncode, "wall_s": wall,
            "budget_s": budget_s, "sigterm_at_s": signalled, "out": str(out), "log": str(log),
            "finished": len(finished), "complete": sum(r["state"] == "COMPLETE" for r in rows),
            "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "trials_per_hour": trials_per_hour(len(finished), wall),
            "best_trial": best["number"] if best else None,
            "best_val_acc": best["best_val_acc"] if best else None,
            "best_toml": str(out / "best.toml") if (out / "best.toml").exists() else None, "trials": rows}


def train_run(label: str, seed: int, cmd: list[str], out: Path, env: dict) -> dict:
    """One `alexnet train` process; its best validation accuracy from RUN/history.json."""
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(result.stdout)
    record = {"label": label, "seed": seed, "command": cmd[1:], "returncode": result.returncode, "wall_s": wall}
    history = out / "history.json"
    if result.returncode != 0 or not history.exists():
        record["error"] = "\n".join(result.stdout.strip().splitlines()[-10:]) or f"exit code {result.returncode}"
        return record
    epochs = json.loads(history.read_text())
    record.update({"epochs": len(epochs), "best_val_acc": best_val_acc(epochs)})
    return record


# ---------------------------------------------------------------- table

def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(studies: list[dict], groups: dict[str, list[dict]], verdicts: dict[str, dict], matmul: dict) -> str:
    out = [f"{'study':<10}  {'finished':>8}  {'complete':>8}  {'pruned':>6}  {'wall s':>8}  {'trials/h':>8}  "
           f"{'best val %':>10}  best trial"]
    out.append("-" * len(out[0]))
    for s in studies:
        out.append(f"{s['name']:<10}  {s['finished']:>8}  {s['complete']:>8}  {s['pruned']:>6}  {s['wall_s']:>8.1f}  "
                   f"{s['trials_per_hour']:>8.1f}  {pct(s['best_val_acc']):>10}  "
                   f"{'-' if s['best_trial'] is None else s['best_trial']}")
    out.append("")
    head = f"{'retrained':<18}  {'seeds':<8}  {'best val % per seed':<26}  {'mean ± std':>14}  {'vs preset':>9}  beats?"
    out += [head, "-" * len(head)]
    for label, runs in groups.items():
        ok = [r for r in runs if r.get("best_val_acc") is not None]
        st = mean_std([100 * r["best_val_acc"] for r in ok])
        ms = f"{st['mean']:.2f} ± {st['std']:.2f}" if st["n"] else "-"
        v = verdicts.get(label)
        diff = "-" if not v or v["difference"] is None else f"{100 * v['difference']:+.2f}"
        beats = "" if not v or v["beats"] is None else ("yes" if v["beats"] else "no")
        out.append(f"{label:<18}  {','.join(str(r['seed']) for r in ok):<8}  "
                   f"{' '.join(pct(r['best_val_acc']) for r in ok):<26}  {ms:>14}  {diff:>9}  {beats}")
    out += ["", f"fp32 matmul {matmul['before']['n']}^2: {matmul['before']['gflops']:.1f} GFLOP/s before, "
                f"{matmul['after']['gflops']:.1f} after",
            "finished: COMPLETE + PRUNED trials; wall: the `alexnet tune` process, start to exit; best val: the best "
            "COMPLETE trial (best.toml's); beats?: the tuned mean exceeds the preset's by more than the larger "
            "sample std"]
    return "\n".join(out)


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ASHA against no pruning at equal wall clock, and the tuned config "
                                            "against the preset, seed for seed.")
    p.add_argument("--data", required=True, help="the training data, e.g. the CIFAR-10 JPEG archive")
    p.add_argument("--preset", default="cifar10-fast", help="the recipe every trial starts from (default cifar10-fast)")
    p.add_argument("--trials", type=int, help="trials of the ASHA study (default 24; --quick 4)")
    p.add_argument("--time-limit-per-trial", type=float, metavar="S",
                   help="each trial's --time-limit (default: the preset's time_limit, 58 s for cifar10-fast; --quick 4)")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--study-seed", type=int, default=0, help="both studies' --seed (default 0)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="retraining seeds (default 0 1 2)")
    p.add_argument("--space", help="--space for both studies (default: alexnet tune's own; --quick: a tiny one)")
    p.add_argument("--work", help="folder for the studies and runs (default: a new temporary folder, kept)")
    p.add_argument("--tag", help="machine tag in the result file's name (default: from the CPU's ISA or the GPU)")
    p.add_argument("--json", help="result file (default benchmarks/results/tune-<preset>-<machine>[-quick].json)")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 trials of 4 s, a tiny network, two epochs; "
                                                        "numbers mean nothing")
    args = p.parse_args(argv)
    if args.data != "cifar10" and not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    from alexnet.config import PRESETS

    if args.preset not in PRESETS:
        p.error(f"--preset {args.preset}: not in alexnet.config.PRESETS (it has: {', '.join(PRESETS)})")
    if args.trials is None:
        args.trials = 4 if args.quick else 24
    if args.trials < 1:
        p.error("--trials must be >= 1")
    if args.time_limit_per_trial is None:
        args.time_limit_per_trial = 4.0 if args.quick else float(PRESETS[args.preset].get("train", {}).get("time_limit")
                                                                 or 60)
    args.work = Path(args.work or tempfile.mkdtemp(prefix="tune-bench-"))
    args.work.mkdir(parents=True, exist_ok=True)
    args.env = dict(os.environ)
    if args.quick:
        args.env["ALEXNET_DATA"] = str(args.work / "cache")  # tiny data: keep it out of the user's cache
        if not args.space:
            args.space = str(args.work / "quick-space.toml")
            Path(args.space).write_text(QUICK_SPACE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from alexnet.engine.device import cpu_has_bf16

    device = resolve_device("auto")
    host = host_info(device)
    tag = args.tag or machine_tag(host, device.type == "cpu" and cpu_has_bf16())
    print(f"{host_name(host)}, {host['torch_threads']} threads; preset {args.preset}, "
          f"{args.time_limit_per_trial:g} s per trial, {args.trials} ASHA trials, seeds {args.seeds}; work {args.work}",
          flush=True)
    before = matmul_gflops()
    print(f"fp32 matmul {before['n']}^2: {before['gflops']:.1f} GFLOP/s", flush=True)

    print(f"ASHA study: {args.trials} trials ...", flush=True)
    asha = run_study("asha", args, args.work / "asha", args.trials, "asha")
    print(f"  asha: {asha['finished']} finished in {asha['wall_s']:.1f} s (exit {asha['returncode']})", flush=True)
    print(f"no-pruning study in the same {asha['wall_s']:.1f} s ...", flush=True)
    nopr = run_study("none", args, args.work / "none", max(1000, 100 * args.trials), "none", budget_s=asha["wall_s"])
    print(f"  none: {nopr['finished']} finished in {nopr['wall_s']:.1f} s (exit {nopr['returncode']})", flush=True)

    quick = QUICK_TRAIN + ["--time-limit", f"{args.time_limit_per_trial:g}"] if args.quick else []
    groups: dict[str, list[dict]] = {"preset": []}
    for s in (asha, nopr):
        if s["best_toml"]:
            groups[f"{s['name']} best (#{s['best_trial']})"] = []
    for seed in args.seeds:
        out = args.work / "runs" / f"preset-seed{seed}"
        cmd = alexnet_cmd("train", "--data", args.data, "--preset", args.preset, "--seed", seed, "--out", out,
                          "--quiet", *quick)
        runs = [("preset", cmd, out)]
        for s in (asha, nopr):
            if s["best_toml"]:
                out = args.work / "runs" / f"{s['name']}-best-seed{seed}"
                runs.append((f"{s['name']} best (#{s['best_trial']})",
                             alexnet_cmd("train", "--config", s["best_toml"], "--seed", seed, *RETRAIN_FLAGS,
                                         "--out", out, "--quiet"), out))
        for label, cmd, out in runs:
            out.parent.mkdir(parents=True, exist_ok=True)
            r = train_run(label, seed, cmd, out, args.env)
            groups[label].append(r)
            status = f"FAILED (exit {r['returncode']}): {r['error']}" if "error" in r else \
                f"{pct(r['best_val_acc'])}% best val in {r['epochs']} epochs, {r['wall_s']:.1f} s"
            print(f"  {label} seed {seed}: {status}", flush=True)

    after = matmul_gflops()
    matmul = {"before": before, "after": after, "mean_gflops": (before["gflops"] + after["gflops"]) / 2}
    preset_accs = [r["best_val_acc"] for r in groups["preset"] if r.get("best_val_acc") is not None]
    verdicts = {label: verdict([r["best_val_acc"] for r in runs if r.get("best_val_acc") is not None], preset_accs)
                for label, runs in groups.items() if label != "preset"}
    print()
    print(format_table([asha, nopr], groups, verdicts, matmul))
    for label, v in verdicts.items():
        if v["beats"] is not None:
            print(f"{label}: {100 * v['difference']:+.2f} points against the preset, seed-to-seed spread "
                  f"{100 * v['spread']:.2f}: {'beats it by more than the spread' if v['beats'] else 'within the spread'}")

    out = Path(args.json) if args.json else \
        HERE / "results" / f"tune-{args.preset}-{tag}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {label: {"seeds": [r["seed"] for r in runs if r.get("best_val_acc") is not None],
                       "best_val_acc": mean_std([r["best_val_acc"] for r in runs if r.get("best_val_acc") is not None]),
                       **({"vs_preset": verdicts[label]} if label in verdicts else {})}
               for label, runs in groups.items()}
    out.write_text(json.dumps({
        "benchmark": "tune", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_commit(), "host": host, "machine": tag, "matmul": matmul,
        "settings": {"data": args.data, "preset": args.preset, "trials": args.trials,
                     "time_limit_per_trial": args.time_limit_per_trial, "sampler": args.sampler,
                     "study_seed": args.study_seed, "seeds": args.seeds, "space": args.space, "quick": args.quick,
                     "retrain_flags": RETRAIN_FLAGS, "work": str(args.work)},
        "studies": [asha, nopr], "runs": groups, "summary": summary}, indent=2) + "\n")
    print(f"\nwrote {out}; studies and runs in {args.work}")
    failed = [r for runs in groups.values() for r in runs if "error" in r]
    bad_exit = asha["returncode"] != 0 or nopr["returncode"] not in (0, 75)
    return 1 if failed or bad_exit else 0


if __name__ == "__main__":
    sys.exit(main())
