"""Wall-clock time and final accuracy of whole `alexnet train` runs, per preset and seed.

Each run is one `python -m alexnet train --data DATA --preset P --seed S --out TMP/run --quiet
[EXTRA...]` process, timed from launch to exit (interpreter start, imports, data decoding and
caching, every epoch, checkpoints, the HTML report when the preset writes one): what a user waits
for. Runs are sequential. Presets that validate only at the end (`val_every` 0) give one point per
run; `--extra --val-every 1` draws the whole curve at the cost of validating every epoch.
With --cold (the default) every run gets a fresh empty ALEXNET_DATA, so extracting/decoding the
data and writing its cache are part of every run; --warm reuses the existing cache.

The fp32 matmul rate (benchmarks/matmul.py) is measured before the first and after the last run;
quote the times beside it.

    python benchmarks/time_to_accuracy.py --data cifar-10-python.tar.gz \\
        --presets cifar10-fast cifar10 --seeds 0 1 2 --targets 85 92
    python benchmarks/time_to_accuracy.py --data DIR --presets cifar10 --seeds 0 --extra --epochs 1

Everything after --extra is passed to `alexnet train` unchanged, so --extra must come last.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from matmul import matmul_gflops  # noqa: E402
from throughput import git_commit, host_info, host_name, resolve_device  # noqa: E402

# The presets of the README's results table; keep in step with it.
DEFAULT_PRESETS = ("cifar10-fast", "cifar10", "cifar10-best")
TIME_BIN = "/usr/bin/time"
# Flags the benchmark sets itself; passing them through --extra would make runs disagree with the table.
OWN_FLAGS = ("--data", "--preset", "--seed", "--out", "--resume")


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- measuring one run

def parse_time_v(text: str) -> dict:
    """Peak RSS (kB) and elapsed wall time (s) from GNU `time -v` output; missing keys are left out."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    if m:
        out["max_rss_kb"] = int(m.group(1))
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)", text)
    if m:
        seconds = 0.0
        for part in m.group(1).split(":"):
            seconds = seconds * 60 + float(part)
        out["elapsed_s"] = seconds
    return out


def tree_rss(proc) -> int:
    """Summed RSS (bytes) of a psutil process and all its descendants (shared pages count twice)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], env: dict, log_dir: Path, poll_s: float = 0.2) -> dict:
    """Run `cmd` to completion; wall seconds, peak RSS, exit code; stdout/stderr go to log_dir."""
    import psutil

    use_time = os.path.exists(TIME_BIN) and os.access(TIME_BIN, os.X_OK)
    time_file = log_dir / "time-v.txt"
    full = [TIME_BIN, "-v", "-o", str(time_file), *cmd] if use_time else cmd
    with open(log_dir / "stdout.txt", "w") as so, open(log_dir / "stderr.txt", "w") as se:
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=so, stderr=se, env=env)
        ps = psutil.Process(proc.pid)
        peak_tree = 0
        while proc.poll() is None:
            try:
                peak_tree = max(peak_tree, tree_rss(ps))
            except psutil.Error:
                pass
            time.sleep(poll_s)
        wall = time.perf_counter() - start
    result = {"returncode": proc.returncode, "wall_perf_counter_s": wall,
              "peak_tree_rss_mb": peak_tree / 2 ** 20 if peak_tree else None, "timer": "perf_counter"}
    if use_time and time_file.exists():
        parsed = parse_time_v(time_file.read_text(errors="replace"))
        if "elapsed_s" in parsed:
            result["time_v_elapsed_s"] = parsed["elapsed_s"]
        if "max_rss_kb" in parsed:
            result["max_rss_mb"] = parsed["max_rss_kb"] / 1024
        result["timer"] = "/usr/bin/time -v"
    # Primary numbers: GNU time's when it ran, else our own clock and the polled process-tree peak.
    result["wall_s"] = result.get("time_v_elapsed_s", wall)
    result["peak_rss_mb"] = result.get("max_rss_mb", result["peak_tree_rss_mb"])
    return result


def validated(epoch: dict) -> bool:
    """Whether an epoch of history.json has a validation accuracy (null, or NaN before, when not)."""
    acc = epoch.get("val_acc")
    return acc is not None and acc == acc


def curve(history: list[dict], wall_s: float) -> tuple[float, list[dict]]:
    """(startup seconds, [{epoch, seconds, val_acc}]) with seconds cumulative from process start.

    startup = wall - sum(epoch seconds): everything outside the epochs' train+validation time
    (start-up, data, model build, checkpoint writes, exit) is put before epoch 1, so each point is
    an upper bound of when that accuracy was reached and the last one is the run's wall time.
    Epochs that were not validated (`--val-every`) give no point.
    """
    startup = wall_s - sum(h["seconds"] for h in history)
    points, t = [], startup
    for h in history:
        t += h["seconds"]
        if validated(h):
            points.append({"epoch": h["epoch"], "seconds": t, "val_acc": h["val_acc"]})
    return startup, points


def time_to_target(points: list[dict], target_pct: float) -> float | None:
    """Seconds until the first epoch with val accuracy >= target (%), None if never reached."""
    return next((p["seconds"] for p in points if p["val_acc"] * 100 >= target_pct), None)


def one_run(data: str, preset: str, seed: int, extra: list[str], cold: bool, keep: Path | None,
            targets: list[float]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"tta-{preset}-s{seed}-"))
    try:
        env = dict(os.environ)
        if cold:
            env["ALEXNET_DATA"] = str(work / "cache")
        run_dir = work / "run"
        cmd = [sys.executable, "-m", "alexnet", "train", "--data", data, "--preset", preset, "--seed", str(seed),
               "--out", str(run_dir), "--quiet", *extra]
        record = {"preset": preset, "seed": seed, "command": cmd[1:], "cold": cold,
                  "alexnet_data": env.get("ALEXNET_DATA"), **run_measured(cmd, env, work)}
        if record["returncode"] != 0:
            tail = (work / "stderr.txt").read_text(errors="replace").strip().splitlines()[-15:]
            record["error"] = "\n".join(tail) or f"exit code {record['returncode']}"
            return record
        history = json.loads((run_dir / "history.json").read_text())
        startup, points = curve(history, record["wall_s"])
        accs = [h["val_acc"] for h in history if validated(h)]
        record.update({"epochs": len(history), "startup_s": startup,
                       "train_val_s": sum(h["seconds"] for h in history),
                       "final_val_acc": accs[-1], "best_val_acc": max(accs), "curve": points,
                       "time_to_target_s": {f"{t:g}": time_to_target(points, t) for t in targets}})
        config = run_dir / "config.json"
        if config.exists():
            meta = json.loads(config.read_text())
            record["config"] = meta.get("config")
            record["dataset"] = meta.get("dataset")
        if keep is not None:
            dest = keep / f"{preset}-seed{seed}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(run_dir, dest)
            record["run_folder"] = str(dest)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- summary, table, plot

def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def summarize(runs: list[dict], presets: list[str], targets: list[float]) -> list[dict]:
    out = []
    for preset in presets:
        ok = [r for r in runs if r["preset"] == preset and "error" not in r]
        rss = [r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb")]
        tree = [r["peak_tree_rss_mb"] for r in ok if r.get("peak_tree_rss_mb")]
        s = {"preset": preset, "seeds": [r["seed"] for r in ok],
             "failed_seeds": [r["seed"] for r in runs if r["preset"] == preset and "error" in r],
             "wall_s": _stats([r["wall_s"] for r in ok]), "startup_s": _stats([r["startup_s"] for r in ok]),
             "final_val_acc_pct": _stats([100 * r["final_val_acc"] for r in ok]),
             "best_val_acc_pct": _stats([100 * r["best_val_acc"] for r in ok]),
             "peak_rss_mb_max": max(rss) if rss else None, "peak_tree_rss_mb_max": max(tree) if tree else None,
             "time_to_target_s": {}}
        for t in targets:
            reached = [r["time_to_target_s"][f"{t:g}"] for r in ok if r["time_to_target_s"][f"{t:g}"] is not None]
            s["time_to_target_s"][f"{t:g}"] = {"reached": len(reached), "of": len(ok), **_stats(reached)}
        out.append(s)
    return out


def _pm(st: dict, fmt: str) -> tuple[str, str]:
    if not st.get("n"):
        return "-", "-"
    return f"{st['mean']:{fmt}} ± {st['std']:{fmt}}", f"{st['min']:{fmt}} / {st['max']:{fmt}}"


def format_table(summary: list[dict], matmul: dict | list[dict], targets: list[float]) -> str:
    """The summary as a fixed-width table; `matmul` is the run's rate, or one per merged result file."""
    cols = [("preset", 16, "<"), ("seeds", 7, "<"), ("wall s mean ± std", 19, ">"), ("wall s min / max", 17, ">"),
            ("val % mean ± std", 16, ">"), ("val % min / max", 15, ">"), ("peak RSS MB", 11, ">"),
            ("tree RSS MB", 11, ">")]
    cols += [(f"s to {t:g}%", 12, ">") for t in targets]

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, cols)).rstrip()

    rows = []
    for s in summary:
        seeds = ",".join(map(str, s["seeds"])) + (f" ({len(s['failed_seeds'])} failed)" if s["failed_seeds"] else "")
        cells = [s["preset"], seeds, *_pm(s["wall_s"], ".1f"), *_pm(s["final_val_acc_pct"], ".2f"),
                 f"{s['peak_rss_mb_max']:,.0f}" if s["peak_rss_mb_max"] else "-",
                 f"{s['peak_tree_rss_mb_max']:,.0f}" if s["peak_tree_rss_mb_max"] else "-"]
        for t in targets:
            tt = s["time_to_target_s"][f"{t:g}"]
            cells.append(f"{tt['mean']:.0f} ({tt['reached']}/{tt['of']})" if tt["reached"] else f"- (0/{tt['of']})")
        rows.append(line(cells))
    header = line([c[0] for c in cols])
    rule = "-" * len(header)
    matmuls = matmul if isinstance(matmul, list) else [matmul]
    rates = "; ".join(f"{m['before']['gflops']:.1f} GFLOP/s before, {m['after']['gflops']:.1f} after, "
                      f"mean {m['mean_gflops']:.1f}" for m in matmuls)
    notes = [f"fp32 matmul {matmuls[0]['before']['n']}^2: {rates}",
             "wall: whole `alexnet train` process (start-up, data, epochs, checkpoints); val: last epoch's val "
             "accuracy; peak RSS: largest single process (time -v), tree: polled sum over the process tree; "
             "s to T%: mean seconds to the first epoch >= T% (runs that reached it / runs)"]
    return "\n".join([header, rule, *rows, rule, *notes])


def plot(runs: list[dict], presets: list[str], targets: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for i, preset in enumerate(presets):
        colour = colours[i % len(colours)]
        ok = [r for r in runs if r["preset"] == preset and "error" not in r]
        for j, r in enumerate(ok):
            xs = [p["seconds"] for p in r["curve"]]
            ys = [100 * p["val_acc"] for p in r["curve"]]
            ax.plot(xs, ys, color=colour, lw=1.0, alpha=0.8, marker="." if len(xs) < 30 else None, ms=3,
                    label=f"{preset} ({len(ok)} seed{'s' if len(ok) != 1 else ''})" if j == 0 else None)
            ax.plot(xs[-1:], ys[-1:], "o", color=colour, ms=6)
    for t in targets:
        ax.axhline(t, color="0.35", ls="--", lw=1)
        ax.annotate(f"{t:g}%", xy=(1, t), xycoords=("axes fraction", "data"), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=9, color="0.25")
    ax.set_xlabel("wall-clock seconds since process start (start-up and data included)", fontsize=11)
    ax.set_ylabel("validation accuracy (%)", fontsize=11)
    ax.set_title(title, fontsize=11)
    xs = [p["seconds"] for r in runs if "error" not in r for p in r["curve"]]
    ax.set_xlim(0, max(xs) * 1.04 if xs else None)
    ys = [100 * p["val_acc"] for r in runs if "error" not in r for p in r["curve"]] + list(targets)
    if ys:
        ax.set_ylim(max(0.0, min(ys) - 5), min(100.0, max(ys) + 3) + 1)
    ax.grid(True, alpha=0.3)
    if any("error" not in r for r in runs):
        ax.legend(loc="best", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- command line

def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Everything after the first --extra goes to `alexnet train` untouched."""
    if "--extra" in argv:
        i = argv.index("--extra")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    own, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(
        description="Wall-clock seconds and final accuracy of whole `alexnet train` runs.",
        epilog="--extra ARGS...: everything after it is passed to `alexnet train` (must come last), "
               "e.g. --extra --epochs 1 --batch-size 16")
    p.add_argument("--data", default=os.environ.get("ALEXNET_BENCH_DATA"),
                   help="training data for every run (default: $ALEXNET_BENCH_DATA)")
    p.add_argument("--presets", nargs="+", help=f"presets to run (default: {' '.join(DEFAULT_PRESETS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cold", dest="cold", action="store_true", default=True,
                       help="fresh empty ALEXNET_DATA per run: decoding and caching are timed (default)")
    cache.add_argument("--warm", dest="cold", action="store_false",
                       help="reuse the existing data cache ($ALEXNET_DATA or ~/.cache/alexnet)")
    p.add_argument("--targets", nargs="+", type=float, default=[], metavar="PCT",
                   help="accuracy targets (%%): dashed lines on the plot and time-to-target columns")
    p.add_argument("--json", default=str(HERE / "results" / "time_to_accuracy.json"))
    p.add_argument("--png", default=str(HERE / "results" / "time_to_accuracy.png"))
    p.add_argument("--keep-runs", metavar="DIR", help="copy every run folder to DIR/<preset>-seed<S> (default: delete)")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: combine the runs of earlier result files (seeds of a long preset run "
                        "on different days) into one table, --json and --png")
    p.add_argument("--extra", metavar="ARGS", help="(see below)")  # listed in --help; split off before parsing
    args = p.parse_args(own)
    args.extra = extra
    if args.merge:
        args.merged = [load_results(path, p) for path in args.merge]
        return args

    if not args.data:
        p.error("no data: pass --data (a CIFAR-10 tarball, batches folder or image folder) "
                "or set ALEXNET_BENCH_DATA")
    if args.data != "cifar10" and not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder")
    from alexnet.config import PRESETS

    presets = args.presets or list(DEFAULT_PRESETS)
    missing = [name for name in presets if name not in PRESETS]
    if missing:
        p.error(f"preset(s) {', '.join(missing)} not in alexnet.config.PRESETS "
                f"(it has: {', '.join(PRESETS)})"
                + ("" if args.presets else "; the default list follows the README table: pass --presets"))
    args.presets = presets
    clash = [a for a in extra if a.split("=")[0] in OWN_FLAGS]
    if clash:
        p.error(f"--extra must not set {', '.join(clash)}: the benchmark sets these itself")
    if args.cold and args.data == "cifar10":
        print("note: --data cifar10 with --cold downloads CIFAR-10 in every run; pass the tarball's path "
              "to time only extraction and decoding", file=sys.stderr)
    return args


def load_results(path: str, p: argparse.ArgumentParser) -> dict:
    """A result file this script wrote, or a one-line usage error naming it."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        p.error(f"--merge {path}: cannot read it as JSON ({e.__class__.__name__}: {e})")
    if not isinstance(doc, dict) or doc.get("benchmark") != "time_to_accuracy" or "runs" not in doc:
        p.error(f"--merge {path}: not a time_to_accuracy.py result file (no 'benchmark': 'time_to_accuracy')")
    return doc


def merge(args: argparse.Namespace) -> int:
    """One summary, table, JSON and plot from the runs of several result files; nothing is trained."""
    runs, seen = [], {}
    for path, doc in zip(args.merge, args.merged):
        for r in doc["runs"]:
            key = (r["preset"], r["seed"])
            if key in seen:
                raise SystemExit(f"--merge: {r['preset']} seed {r['seed']} is in both {seen[key]} and {path}; "
                                 "leave one of them out")
            seen[key] = path
            # A run from a file that is itself a merge already carries its own source and matmul rate.
            runs.append({"source": path, "matmul": doc["matmul"], **r})
    presets = args.presets or list(dict.fromkeys(r["preset"] for r in runs))
    targets = args.targets or sorted({t for doc in args.merged for t in doc.get("targets_pct", [])})
    for r in runs:  # targets the original run did not ask for come from its curve
        if "error" not in r:
            r["time_to_target_s"] = {f"{t:g}": time_to_target(r["curve"], t) for t in targets}
    # One rate per file, or the rates a merged file already lists.
    matmuls = [m for doc in args.merged for m in (doc["matmul"] if isinstance(doc["matmul"], list) else [doc["matmul"]])]
    summary = summarize(runs, presets, targets)
    print(format_table(summary, matmuls, targets))
    first = args.merged[0]
    mean_rate = statistics.fmean(m["mean_gflops"] for m in matmuls)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "time_to_accuracy", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "merged_from": args.merge, "git": [doc.get("git") for doc in args.merged], "host": first.get("host"),
        "data": first.get("data"), "cold_cache": [doc.get("cold_cache") for doc in args.merged],
        "presets": presets, "seeds": sorted({r["seed"] for r in runs}), "targets_pct": targets,
        "matmul": matmuls, "summary": summary, "runs": runs}, indent=2) + "\n")
    host = first.get("host") or {}
    title = plot_title(presets, first.get("data"), host, mean_rate) + f" ({len(args.merge)} result files)"
    plot(runs, presets, targets, Path(args.png), title)
    print(f"\nwrote {out} and {args.png}")
    return 1 if any("error" in r for r in runs) else 0


def plot_title(presets: list[str], data, host: dict, matmul_rate: float) -> str:
    return (f"{', '.join(presets)} on {Path(str(data)).name}: {host_name(host)}, "
            f"{host.get('torch_threads', '?')} threads, fp32 matmul {matmul_rate:.0f} GFLOP/s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    host = host_info(resolve_device("auto"))  # the device `alexnet train` picks by default
    total = len(args.presets) * len(args.seeds)
    print(f"{host_name(host)}, {host['torch_threads']} threads; {total} run(s), "
          f"{'cold' if args.cold else 'warm'} data cache; extra: {' '.join(args.extra) or '(none)'}", flush=True)
    before = matmul_gflops()
    print(f"fp32 matmul {before['n']}^2: {before['gflops']:.1f} GFLOP/s", flush=True)

    keep = Path(args.keep_runs) if args.keep_runs else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    runs, k = [], 0
    for preset in args.presets:
        for seed in args.seeds:
            k += 1
            print(f"[{k}/{total}] {preset} seed {seed} ...", end=" ", flush=True)
            r = one_run(args.data, preset, seed, args.extra, args.cold, keep, args.targets)
            runs.append(r)
            if "error" in r:
                print(f"FAILED (exit {r['returncode']}):\n{r['error']}", flush=True)
            else:
                rss = f"{r['peak_rss_mb']:,.0f} MB" if r.get("peak_rss_mb") else "?"
                print(f"{r['wall_s']:.1f} s ({r['startup_s']:.1f} s outside epochs), val "
                      f"{100 * r['final_val_acc']:.2f}% (best {100 * r['best_val_acc']:.2f}%), peak RSS {rss}",
                      flush=True)
    after = matmul_gflops()
    matmul = {"before": before, "after": after, "mean_gflops": (before["gflops"] + after["gflops"]) / 2}
    summary = summarize(runs, args.presets, args.targets)
    print()
    print(format_table(summary, matmul, args.targets))

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "time_to_accuracy", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_commit(), "host": host, "data": args.data, "cold_cache": args.cold, "extra": args.extra,
        "presets": args.presets, "seeds": args.seeds, "targets_pct": args.targets, "matmul": matmul,
        "summary": summary, "runs": runs}, indent=2) + "\n")
    title = plot_title(args.presets, args.data, host, matmul["mean_gflops"])
    plot(runs, args.presets, args.targets, Path(args.png), title)
    print(f"\nwrote {out} and {args.png}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
