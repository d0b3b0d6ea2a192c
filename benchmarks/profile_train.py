"""Where the time of a whole `alexnet train --preset P` run goes, on this machine, measured in one run.

1. Start-up: a fresh interpreter importing torch, `alexnet.cli`, and what `alexnet train` imports (median of 3).
2. Data: decoding the archive into the uint8 cache with one worker and with every core, then reading the cache.
3. A whole run (`alexnet.api.train` with the preset, --time-limit T, a cold cache of its own) in a fresh process,
   with a callback that stamps each phase: start-up and imports, data and model set-up, the training steps,
   the time between steps (checkpoints, validation, the clock's checks) and the exit.
4. One training epoch again under torch.profiler (a window of --profile-steps steps after --skip steps): each
   convolution's forward and backward time and GFLOP/s against the matmul rates (fp32 and bf16, measured in the
   same run), and batch norm, pooling, the linear layer, the optimizer step and the rest, per step.

    python benchmarks/profile_train.py --data cifar10-jpeg-train.tar.gz
    python benchmarks/profile_train.py --data cifar10-jpeg-train.tar.gz --preset cifar10 --time-limit 0 --epochs 2

Prints tables and writes benchmarks/results/profile-<preset>-<machine>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "PROFILE_TRAIN_RESULT "


# ---------------------------------------------------------------- arithmetic (tested without a run)

def phases(stamps: dict, steps: list[list[float]], wall_s: float) -> list[dict]:
    """The run's time split from its stamps (seconds since the process was created): `imported` (the API is
    imported), `train_begin`, `train_end`; `steps[e]` the end times of epoch e's steps, `epoch_begin[e]` and
    `epoch_end[e]`. Steps take the time from the previous step's end (or the epoch's start); the rest of each
    epoch is what runs between them (validation at its end, checkpoints, the clock)."""
    step_s = sum(b - a for e, ends in enumerate(steps)
                 for a, b in zip([stamps["epoch_begin"][e], *ends[:-1]], ends))
    epochs_s = sum(end - begin for begin, end in zip(stamps["epoch_begin"], stamps["epoch_end"]))
    rows = [("start-up: interpreter and imports", stamps["imported"]),
            ("data and model set-up (decode or cache read, whitening)", stamps["train_begin"] - stamps["imported"]),
            ("training steps", step_s),
            ("in the epochs between steps (validation, checkpoints)", epochs_s - step_s),
            ("between epochs and after the last (final files, report)",
             stamps["train_end"] - stamps["train_begin"] - epochs_s),
            ("exit", wall_s - stamps["train_end"])]
    return [{"phase": name, "seconds": s, "share": s / wall_s} for name, s in rows]


# ---------------------------------------------------------------- the children

def child_run(args: argparse.Namespace) -> int:
    """A whole run in this process, stamped by a callback; one line of JSON at the end."""
    import psutil

    created = psutil.Process().create_time()
    import alexnet.api as api
    from alexnet.engine.callbacks import Callback

    stamps: dict = {"imported": time.time() - created, "epoch_begin": [], "epoch_end": []}
    steps: list[list[float]] = []

    class Stamps(Callback):
        def on_train_begin(self, run):
            stamps["train_begin"] = time.time() - created

        def on_epoch_begin(self, run, epoch):
            stamps["epoch_begin"].append(time.time() - created)
            steps.append([])

        def on_step_end(self, run, step, logs):
            steps[-1].append(time.time() - created)

        def on_epoch_end(self, run, epoch, logs):
            stamps["epoch_end"].append(time.time() - created)

        def on_train_end(self, run):
            stamps["train_end"] = time.time() - created

    options = {"time_limit": args.time_limit, "seed": args.seed}
    if args.epochs:
        options["epochs"] = args.epochs
    out = api.train(preset=args.preset, data=args.data, out=args.out, progress=False, started_at=created,
                    callbacks=[Stamps()], **options)
    history = json.loads((Path(out) / "history.json").read_text())
    print(RESULT_PREFIX + json.dumps({"stamps": stamps, "steps": steps, "history": history}), flush=True)
    return 0


def child_layers(args: argparse.Namespace) -> int:
    """One epoch of the preset with torch.profiler over a window of steps; one line of JSON."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import alexnet.api as api
    from alexnet.engine.callbacks import Callback

    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    window: dict = {}

    class Window(Callback):
        def on_step_end(self, run, step, logs):
            if step + 1 == args.skip:
                window["start"] = time.perf_counter()
                prof.start()
            elif step + 1 == args.skip + args.profile_steps:
                prof.stop()
                window["seconds"] = time.perf_counter() - window["start"]

    api.train(preset=args.preset, data=args.data, out=args.out, progress=False, stop_after_epoch=1, time_limit=0,
              seed=args.seed, report=False, callbacks=[Window()])
    if "seconds" not in window:
        raise SystemExit(f"profile_train.py: error: the epoch has fewer than {args.skip + args.profile_steps} steps; "
                         "lower --skip or --profile-steps")
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        rows.append({"name": e.key, "shapes": [list(s) for s in e.input_shapes], "count": e.count,
                     "total_us": e.cpu_time_total, "self_us": e.self_cpu_time_total})
    print(RESULT_PREFIX + json.dumps({"window": window, "steps": args.profile_steps, "rows": rows,
                                      "threads": torch.get_num_threads()}), flush=True)
    return 0


def run_child(kind: str, args: argparse.Namespace, out: Path, env: dict) -> tuple[dict, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--data", args.data, "--preset",
           args.preset, "--time-limit", str(args.time_limit), "--seed", str(args.seed), "--out", str(out),
           "--skip", str(args.skip), "--profile-steps", str(args.profile_steps)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise SystemExit(f"profile_train.py: error: the {kind} run failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):]), wall


# ---------------------------------------------------------------- the parent's parts

def startup_times(repeats: int = 3) -> list[dict]:
    """Fresh interpreters importing what a command needs; the median of `repeats`."""
    cases = [("python -c pass", "pass"), ("import torch", "import torch"),
             ("import alexnet.cli (`alexnet --help`)", "import alexnet.cli"),
             ("+ what `alexnet train` imports", "import alexnet.cli, alexnet.api, alexnet.engine.trainer")]
    out = []
    for name, code in cases:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        out.append({"what": name, "seconds": statistics.median(times)})
    return out


def data_times(data: str) -> list[dict]:
    """Decoding into an empty cache with one worker and with all cores, then the warm read."""
    from alexnet.data.sources import read_source

    out = []
    for label, workers in (("decode, 1 process", 1), (f"decode, {os.cpu_count()} processes (default)", 0)):
        cache = tempfile.mkdtemp(prefix="profile-cache-")
        try:
            start = time.perf_counter()
            splits, _, _ = read_source(data, cache_dir=cache, workers=workers)
            out.append({"what": f"{label}, cache written", "seconds": time.perf_counter() - start})
            if workers == 0:
                start = time.perf_counter()
                read_source(data, cache_dir=cache, workers=workers)
                out.append({"what": "cache read (every later run)", "seconds": time.perf_counter() - start})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    out.append({"what": "images", "count": sum(len(labels) for _, labels in splits.values())})
    return out


CATEGORIES = (  # (category, op names whose self time it takes)
    ("batch norm", ("batch_norm",)),
    ("max pooling", ("max_pool",)),
    ("ReLU", ("relu", "threshold")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
)


def layer_table(prof: dict, gflops_fp32: float, gflops_bf16: float | None) -> list[dict]:
    """Per convolution (forward: aten::convolution, backward: aten::convolution_backward, keyed by the weight's
    shape), then the other kinds of op by self time, the optimizer step and the rest, in ms per step."""
    steps, total_ms = prof["steps"], 1000 * prof["window"]["seconds"]
    convs: dict[tuple, dict] = {}
    for r in prof["rows"]:
        if r["name"] == "aten::convolution" and len(r["shapes"]) > 1 and len(r["shapes"][1]) == 4:
            c = convs.setdefault(tuple(r["shapes"][1]), {"fwd_us": 0.0, "bwd_us": 0.0, "flops": 0, "x": None})
            c["fwd_us"] += r["total_us"]
            c["x"] = r["shapes"][0]
        elif r["name"] == "aten::convolution_backward" and len(r["shapes"]) > 2 and len(r["shapes"][2]) == 4:
            c = convs.setdefault(tuple(r["shapes"][2]), {"fwd_us": 0.0, "bwd_us": 0.0, "flops": 0, "x": None})
            c["bwd_us"] += r["total_us"]
            c["grad_out"] = r["shapes"][0]
    table = []
    # In the network's order: the input side shrinks layer by layer, the channels grow.
    order = sorted(convs.items(), key=lambda kv: (-(kv[1]["x"] or [0, 0, 0])[2], kv[0][1]))
    for i, (w, c) in enumerate(order, 1):
        x, g = c["x"], c.get("grad_out")
        # 2 N Cout Hout Wout Cin kh kw, from the output gradient's shape: no stride or padding needed.
        flops = 2 * g[0] * g[1] * g[2] * g[3] * w[1] * w[2] * w[3] if g else None
        # Backward: the weight's gradient and the input's, each the forward's work; the first layer's input
        # is the data, which needs no gradient.
        bwd_flops = flops * (1 if i == 1 else 2) if flops else None
        fwd, bwd = c["fwd_us"] / 1000 / steps, c["bwd_us"] / 1000 / steps
        for part, ms, f in (("forward", fwd, flops), ("backward", bwd, bwd_flops)):
            rate = f / (ms / 1000) / 1e9 if f and ms else None
            table.append({"part": f"conv{i} {part} ({w[1]}->{w[0]}, {w[2]}x{w[3]}, input {x[2]}x{x[3]})"
                          if x else f"conv{i} {part}", "ms": ms, "gflops": rate,
                          "of_fp32": rate / gflops_fp32 if rate else None,
                          "of_bf16": rate / gflops_bf16 if rate and gflops_bf16 else None})
    for category, names in CATEGORIES:
        us = sum(r["self_us"] for r in prof["rows"] if any(n in r["name"] for n in names))
        table.append({"part": category + " (forward and backward)", "ms": us / 1000 / steps})
    linear = sum(r["total_us"] for r in prof["rows"] if r["name"] in ("aten::linear",))
    linear_bwd = sum(r["total_us"] for r in prof["rows"] if r["name"].endswith("AddmmBackward0"))
    table.append({"part": "linear layer (forward and backward)", "ms": (linear + linear_bwd) / 1000 / steps})
    opt = sum(r["total_us"] for r in prof["rows"] if r["name"].startswith("Optimizer.step#"))
    table.append({"part": "optimizer step", "ms": opt / 1000 / steps})
    counted = sum(t["ms"] for t in table)
    table.append({"part": "the rest (augmentation, copies, autograd, Python)", "ms": total_ms / steps - counted})
    for t in table:
        t["share"] = t["ms"] / (total_ms / steps)
    return table


def fmt_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[0] for c in cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            cells.append("" if v is None else (fmt.format(v) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="cifar10-fast")
    p.add_argument("--time-limit", type=float, default=40.0, help="the whole run's --time-limit (default 40; 0: none)")
    p.add_argument("--epochs", type=int, help="the whole run's --epochs (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", type=int, default=30, help="steps of the profiled epoch before the window (default 30)")
    p.add_argument("--profile-steps", type=int, default=20, help="steps in the profiler's window (default 20)")
    p.add_argument("--json", help="result file (default benchmarks/results/profile-<preset>-<machine>.json)")
    p.add_argument("--child", choices=["run", "layers"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "run":
        return child_run(args)
    if args.child == "layers":
        return child_layers(args)
    sys.path.insert(0, str(HERE))
    from matmul import matmul_gflops
    from throughput import git_commit, host_info, host_name, machine_tag, resolve_device

    from alexnet.engine.device import cpu_has_bf16

    host = host_info(resolve_device("cpu"))
    bf16 = cpu_has_bf16()
    print(f"{host_name(host)}, {host['torch_threads']} threads; --preset {args.preset} --time-limit {args.time_limit:g}",
          flush=True)
    before = {"fp32": matmul_gflops(), "bf16": matmul_gflops(dtype="bf16")}
    print(f"matmul 2048^2: fp32 {before['fp32']['gflops']:.1f}, bf16 {before['bf16']['gflops']:.1f} GFLOP/s", flush=True)

    print("\nstart-up (fresh interpreters, median of 3):", flush=True)
    startup = startup_times()
    print(fmt_table(startup, [("import", "what", ""), ("seconds", "seconds", "{:.2f}")]), flush=True)
    print("\ndata:", flush=True)
    data = data_times(args.data)
    print(fmt_table(data[:-1], [("step", "what", ""), ("seconds", "seconds", "{:.2f}")])
          + f"\n({data[-1]['count']:,} images)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="profile-train-"))
    try:
        env = {**os.environ, "ALEXNET_DATA": str(work / "cache")}  # cold: the run decodes
        result, wall = run_child("run", args, work / "run", env)
        split = phases(result["stamps"], result["steps"], wall)
        history = result["history"]
        accs = [h["val_acc"] for h in history if h.get("val_acc") is not None and h["val_acc"] == h["val_acc"]]
        print(f"\nthe whole run, cold cache: {wall:.1f} s, {len(history)} epochs, "
              f"{sum(len(s) for s in result['steps']):,} steps, validation {100 * accs[-1]:.2f}%", flush=True)
        print(fmt_table(split, [("phase", "phase", ""), ("seconds", "seconds", "{:.2f}"), ("share", "share", "{:.1%}")]),
              flush=True)
        prof, _ = run_child("layers", args, work / "layers", env)  # the cache is warm now
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = {"fp32": matmul_gflops(), "bf16": matmul_gflops(dtype="bf16")}
    fp32 = statistics.fmean([before["fp32"]["gflops"], after["fp32"]["gflops"]])
    bf = statistics.fmean([before["bf16"]["gflops"], after["bf16"]["gflops"]])
    layers = layer_table(prof, fp32, bf)
    step_ms = 1000 * prof["window"]["seconds"] / prof["steps"]
    print(f"\none step under torch.profiler ({prof['steps']} steps after {args.skip} of epoch 1: {step_ms:.1f} ms a "
          f"step; matmul fp32 {fp32:.1f}, bf16 {bf:.1f} GFLOP/s):", flush=True)
    print(fmt_table(layers, [("part", "part", ""), ("ms/step", "ms", "{:.2f}"), ("share", "share", "{:.1%}"),
                             ("GFLOP/s", "gflops", "{:.1f}"), ("of fp32 matmul", "of_fp32", "{:.0%}"),
                             ("of bf16 matmul", "of_bf16", "{:.0%}")]), flush=True)
    print(f"matmul 2048^2 after: fp32 {after['fp32']['gflops']:.1f}, bf16 {after['bf16']['gflops']:.1f} GFLOP/s")
    tag = machine_tag(host, bf16)
    out = Path(args.json or HERE / "results" / f"profile-{args.preset}-{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "profile_train", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_commit(), "host": host, "machine": tag, "preset": args.preset, "time_limit": args.time_limit,
        "matmul": {"before": before, "after": after}, "startup": startup, "data": data,
        "run": {"wall_s": wall, "phases": split, "history": history},
        "layers": {"step_ms": step_ms, "steps": prof["steps"], "skip": args.skip, "table": layers}},
        indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
