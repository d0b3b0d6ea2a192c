"""Load test of `alexnet serve` on loopback with wrk, and single-image latency of `alexnet predict`.

For each network (`cifar10`: the default preset's; `notebook-227`: the notebook recipe's 227 px `alexnet` with
batch norm, fed 32 px images upsampled inside the model), each backend (torch; onnxruntime; `torch-bf16`: torch
under bf16 autocast, on a CPU with bf16 units), each precision of the onnx backend (fp32; int8, `alexnet export
--quantize int8`), each number of test-time views (--views: the run's own, 2, 1) and batching on (--max-batch,
default 32) and off (--max-batch 1, for the run's own views): start `alexnet serve` on a free loopback port,
warm it up, then `wrk -c CONNECTIONS -d DURATION` POSTs one 32 px JPEG as the raw body (a small Lua script)
until the time is up. Reported: predictions/s, latency p50/p95/p99, errors (wrk's non-2xx answers and socket
errors) and the mean batch the server formed (its /health counters). With --data (the runs' training data),
each precision and number of views also gets its accuracy on the run's held-out validation images, computed
in process through the same classifier the service loads: the price of each speed-up.
Then single-image latency: `alexnet predict MODEL IMG` as a whole process (cold: a new interpreter each time;
median of several) and an in-process call (`prepare` + `probabilities`), torch against onnxruntime. The dense
fp32 matmul rate (benchmarks/matmul.py) is measured before and after, as in the other benchmarks: quote the
figures beside it.

The weights come from a one-epoch training on synthetic images (or the runs given with --run-cifar10 /
--run-notebook): throughput does not depend on accuracy. The load generator runs on the same machine and
counts against the server.

    python benchmarks/serve.py                                  # every case, 20 s each
    python benchmarks/serve.py -d 3 --cases cifar10             # a short check
    python benchmarks/serve.py --quick                          # smoke test: 3 s runs; numbers mean little
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet.cpuinfo import int8_class  # noqa: E402
from matmul import matmul_gflops  # noqa: E402
from throughput import git_commit, host_info, host_name  # noqa: E402

# name -> how `alexnet train` makes a model of that network (one epoch: only the architecture matters here).
NETWORKS = {
    "cifar10": ["--preset", "cifar10", "--time-limit", "0"],
    "notebook-227": ["--preset", "notebook", "--batch-size", "32"],
}
RESULT_TAG = "WRK_RESULT "
# cifar10, batching on, 2-core box; "cheaper": int8 or fewer views
TARGETS = {"predictions_s": 1000, "cheaper_predictions_s": 2000, "p99_ms": 100, "batching_gain": 3}

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("ALEXNET_BENCH_IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def alexnet(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def synthetic_folder(root: Path, classes: int = 10, per_class: int = 12) -> Path:
    """32 px JPEGs whose class is a bright channel: enough for one epoch that makes the weights."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 110, (32, 32, 3), dtype=np.uint8)
            pixels[..., c % 3] += 120
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.jpg", quality=95)
    return root


def make_model(name: str, run: Path | None, work: Path, data: Path | None = None) -> tuple[Path, Path]:
    """(run folder or checkpoint, exported folder with its int8 graphs) of network `name`: trained here unless
    `run` is given; with `data`, the export checks int8 against fp32 on its held-out images."""
    if run is None:
        data = work / "synthetic"
        if not data.exists():
            synthetic_folder(data)
        run = work / f"run-{name}"
        print(f"training a one-epoch {name} model on synthetic images ...", flush=True)
        result = alexnet("train", "--data", data, *NETWORKS[name], "--epochs", "1", "--out", run, "--quiet",
                         "--no-report", env={**os.environ, "ALEXNET_DATA": str(work / "cache")})
        if result.returncode != 0:
            sys.exit(f"serve.py: training the {name} model failed:\n{result.stderr}")
    exported = work / f"model-{name}"
    check = ["--check", str(data), "--check-limit", "5000"] if data else []
    result = alexnet("export", run, "--out", exported, "--quantize", "int8", *check)
    print(result.stdout.strip(), flush=True)
    if result.returncode != 0:
        sys.exit(f"serve.py: exporting {run} failed:\n{result.stderr}")
    return run, exported


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


class Server:
    """`alexnet serve MODEL --port 0 ...` in its own process, until stopped with SIGTERM."""

    def __init__(self, model: Path, backend: str, max_batch: int, max_wait_ms: float, log: Path,
                 precision: str = "fp32", views: str = "all"):
        self.log = open(log, "w")
        name, _, amp = backend.partition("-")  # "torch-bf16": the torch backend under bf16 autocast
        self.proc = subprocess.Popen([sys.executable, "-m", "alexnet", "serve", str(model), "--port", "0",
                                      "--backend", name, "--amp", amp or "off", "--max-batch", str(max_batch),
                                      "--max-wait-ms", str(max_wait_ms), "--precision", precision,
                                      "--views", views],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r" on (http://\S+)", line)
        if not match:
            self.stop()
            sys.exit(f"serve.py: alexnet serve did not start: {line!r} (see {log})")
        self.url = match.group(1)
        deadline = time.monotonic() + 120
        while True:
            try:
                get_json(self.url + "/health")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    sys.exit(f"serve.py: alexnet serve did not answer /health (see {log})")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def wrk(url: str, script: Path, image: Path, connections: int, threads: int, seconds: float) -> dict:
    """One bounded wrk run (it stops after `seconds`); its summary as a dict."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
           url + "/predict"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "ALEXNET_BENCH_IMAGE": str(image)})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.exit(f"serve.py: wrk gave no result (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")


def load_case(network: str, backend: str, batching: bool, model: Path, args: argparse.Namespace,
              script: Path, work: Path, precision: str = "fp32", views: str = "all") -> dict:
    max_batch = args.max_batch if batching else 1
    log = work / f"serve-{network}-{backend}-{precision}-views{views}-{max_batch}.log"
    server = Server(model, backend, max_batch, args.max_wait_ms, log, precision, views)
    try:
        wrk(server.url, script, args.image, args.connections, args.wrk_threads, args.warmup)
        before = get_json(server.url + "/health")["batching"]
        run = wrk(server.url, script, args.image, args.connections, args.wrk_threads, args.duration)
        after = get_json(server.url + "/health")["batching"]
        server_passes = get_json(server.url + "/model")["views"]["passes"]
    finally:
        server.stop()
    seconds = run["duration_us"] / 1e6
    passes = after["forward_passes"] - before["forward_passes"]
    images = after["images"] - before["images"]
    socket_errors = run["connect"] + run["read"] + run["write"] + run["timeout"]
    return {"network": network, "backend": backend, "precision": precision, "views": views,
            "passes": server_passes, "batching": batching, "max_batch": max_batch,
            "max_wait_ms": args.max_wait_ms, "connections": args.connections, "seconds": round(seconds, 2),
            "requests": run["requests"], "predictions_s": run["requests"] / seconds,
            "p50_ms": run["p50_us"] / 1000, "p95_ms": run["p95_us"] / 1000, "p99_ms": run["p99_us"] / 1000,
            "max_ms": run["max_us"] / 1000, "non_2xx": run["status"], "socket_errors": socket_errors,
            "errors": run["status"] + socket_errors, "forward_passes": passes,
            "mean_batch": images / passes if passes else 0.0}


def cold_predict(model: Path, backend: str, image: Path, runs: int, precision: str = "fp32") -> dict:
    """Wall seconds of whole `alexnet predict` processes (a new interpreter each: imports, model load, one image)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = alexnet("predict", model, image, "--backend", backend, "--precision", precision)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"serve.py: alexnet predict failed: {result.stderr}")
    return {"median_s": statistics.median(times), "runs_s": [round(t, 3) for t in times]}


def in_process(model: Path, backend: str, image: Path, calls: int, precision: str = "fp32") -> dict:
    """Milliseconds of `prepare(bytes)` + `probabilities` for one image in a loaded classifier, median."""
    from alexnet.runtime import load_classifier

    clf = load_classifier(model, backend, precision=precision)
    data = image.read_bytes()
    for _ in range(10):
        clf.probabilities(clf.prepare(data, image.name)[None])
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        clf.probabilities(clf.prepare(data, image.name)[None])
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "p90_ms": 1000 * float(np.percentile(times, 90))}


def held_out_accuracy(exported: Path, data: Path) -> dict[tuple[str, str, str], float]:
    """Accuracy on the run's held-out validation split for every (backend, precision, views) the service can
    run: `alexnet evaluate --split val --backend onnx` with those flags (the classifier the service loads). The
    torch backend serves fp32 with the same numbers as the fp32 graph (the export's check: within 1e-4, the same
    top class on every image), so its rows take the fp32 graph's accuracy."""
    from alexnet.api import evaluate

    out = {}
    for precision in ("fp32", "int8"):
        for views in ("all", "2", "1"):
            metrics = evaluate(exported, data=str(data), split="val", device="cpu", backend="onnx",
                               precision=precision, views=views)
            out[("onnx", precision, views)] = metrics["accuracy"]
            if precision == "fp32":
                out[("torch", precision, views)] = metrics["accuracy"]
    print(f"held-out accuracy on {metrics['num_samples']:,} images of the val split of {data}: "
          + ", ".join(f"onnx {p} views {v}: {out[('onnx', p, v)] * 100:.2f}%" for p in ("fp32", "int8")
                      for v in ("all", "2", "1")), flush=True)
    return out


def format_table(cases: list[dict], latency: list[dict], matmul: dict, host: dict, settings: dict) -> str:
    head = (f"{'network':<13} {'backend':<10} {'precision':<9} {'views':>5} {'batching':<9} {'accuracy':>8} "
            f"{'pred/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'mean batch':>10}")
    lines = [head, "-" * len(head)]
    for c in cases:
        batching = f"on {c['max_batch']}" if c["batching"] else "off"
        accuracy = f"{c['accuracy'] * 100:.2f}%" if c.get("accuracy") is not None else "-"
        lines.append(f"{c['network']:<13} {c['backend']:<10} {c['precision']:<9} {c['passes']:>5} {batching:<9} "
                     f"{accuracy:>8} {c['predictions_s']:>8,.0f} {c['p50_ms']:>7.1f} {c['p95_ms']:>7.1f} "
                     f"{c['p99_ms']:>7.1f} {c['errors']:>6} {c['mean_batch']:>10.1f}")
    lines.append("")
    head2 = (f"{'network':<13} {'backend':<7} {'precision':<9} {'predict, cold process (median)':>31} "
             f"{'in-process call (median)':>25}")
    lines += [head2, "-" * len(head2)]
    for r in latency:
        lines.append(f"{r['network']:<13} {r['backend']:<7} {r['precision']:<9} {r['cold']['median_s']:>29.2f} s "
                     f"{r['in_process']['median_ms']:>22.2f} ms")
    lines += ["", f"{host_name(host)}, {host['cpu_count']} CPUs; torch {host['torch']}; load average "
                  f"{settings['load_before']} before, {settings['load_after']} after",
              f"fp32 matmul {matmul['before']['n']}^2: {matmul['before']['gflops']:.1f} GFLOP/s before, "
              f"{matmul['after']['gflops']:.1f} after",
              f"wrk -t{settings['wrk_threads']} -c{settings['connections']} -d{settings['duration']:g}s (after "
              f"{settings['warmup']:g} s warm-up), one {settings['image_bytes']}-byte {settings['image_side']} px JPEG "
              "as the raw body; errors = non-2xx + socket errors; the load generator shares the machine",
              "weights from a one-epoch training (throughput does not depend on accuracy)"
              if not settings["given_runs"] else "weights from the runs given"]
    return "\n".join(lines)


def target_lines(cases: list[dict]) -> list[str]:
    """The serving targets for the default network on the 2-core box, met or not, per backend and precision:
    >= 1,000 predictions/s at p99 <= 100 ms with the run's own views (whatever the precision), >= 2,000 with
    int8 or fewer views (the accuracy each costs beside it), and batching on >= 3x off."""
    out = []
    for c in cases:
        if c["network"] != "cifar10" or not c["batching"]:
            continue
        rates = ([TARGETS["predictions_s"]] if c["views"] == "all" else []) + (
            [TARGETS["cheaper_predictions_s"]] if c["views"] != "all" or c["precision"] == "int8" else [])
        off = next((o for o in cases if o["network"] == "cifar10" and not o["batching"]
                    and (o["backend"], o["precision"], o["views"]) == (c["backend"], c["precision"], c["views"])), None)
        gain = c["predictions_s"] / off["predictions_s"] if off and off["predictions_s"] else None
        cost = (f", accuracy {c['accuracy'] * 100:.2f}%" if c.get("accuracy") is not None else "")
        ok = c["p99_ms"] <= TARGETS["p99_ms"] and c["errors"] == 0
        verdicts = ", ".join(f">= {rate:,}/s: {'met' if ok and c['predictions_s'] >= rate else 'missed'}"
                             for rate in rates)
        out.append(f"target cifar10/{c['backend']} {c['precision']} views {c['views']}, batching on, p99 <= "
                   f"{TARGETS['p99_ms']} ms, 0 errors: {verdicts} ({c['predictions_s']:,.0f}/s, p99 "
                   f"{c['p99_ms']:.0f} ms, {c['errors']} errors{cost})"
                   + (f"; batching on / off = {gain:.1f}x (target >= {TARGETS['batching_gain']}x)" if gain else ""))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Load test of alexnet serve (wrk) and single-image predict latency.")
    p.add_argument("--cases", nargs="+", default=list(NETWORKS), choices=list(NETWORKS), metavar="NETWORK",
                   help=f"networks (default all): {', '.join(NETWORKS)}")
    p.add_argument("--backends", nargs="+", choices=["torch", "onnx", "torch-bf16"],
                   help="default: torch and onnx, and torch-bf16 (--amp bf16) on a CPU with bf16 units")
    p.add_argument("-d", "--duration", type=float, help="seconds of load per case (default 20; --quick 3)")
    p.add_argument("-c", "--connections", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the machine is small)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch with batching on")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    p.add_argument("--image", type=Path, help="the JPEG to POST (default: a synthetic 32 px one)")
    p.add_argument("--run-cifar10", type=Path, help="a cifar10 run to serve instead of training one")
    p.add_argument("--run-notebook", type=Path, help="a notebook-recipe run to serve instead of training one")
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"],
                   help="precisions of the onnx backend (default both)")
    p.add_argument("--views", nargs="+", default=["all", "2", "1"], choices=["all", "2", "1"],
                   help="test-time views to serve with (default all, 2 and 1); batching off runs the first only")
    p.add_argument("--data", type=Path, help="the runs' training data: int8 is checked on its held-out images "
                                             "and each case gets its accuracy there (give --run-* trained on it)")
    p.add_argument("--cold-runs", type=int, help="cold `alexnet predict` processes per model (default 5; --quick 2)")
    p.add_argument("--calls", type=int, default=200, help="in-process calls per model")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 s runs, 1 s warm-up, 2 cold runs")
    p.add_argument("--work", type=Path, help="folder for the models and logs (default: a temporary one)")
    p.add_argument("--json", help="output file (default benchmarks/results/serve-cpu.json; -quick.json with --quick)")
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 20.0)
    args.warmup = 1.0 if args.quick else args.warmup
    args.cold_runs = args.cold_runs or (2 if args.quick else 5)
    if args.backends is None:
        from alexnet.engine.device import cpu_has_bf16

        args.backends = ["torch", "onnx"] + (["torch-bf16"] if cpu_has_bf16() else [])
    if args.connections < args.wrk_threads:
        p.error("--connections must be at least --wrk-threads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("serve.py: wrk is not installed (Debian: apt install wrk)")
    work = args.work or Path(tempfile.mkdtemp(prefix="alexnet-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    host = host_info(torch.device("cpu"))
    print(f"{host_name(host)}: {host['cpu_count']} CPUs, torch {host['torch']}; work folder {work}", flush=True)
    load_before = os.getloadavg()[0]
    matmul_before = matmul_gflops(2048, 7)
    print(f"fp32 matmul before: {matmul_before['gflops']:.1f} GFLOP/s", flush=True)

    if args.image is None:
        args.image = work / "image.jpg"
        pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(args.image, quality=90)
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    given = {"cifar10": args.run_cifar10, "notebook-227": args.run_notebook}
    models = {name: make_model(name, given[name], work, args.data if given[name] else None) for name in args.cases}

    cases, latency = [], []
    for name in args.cases:
        run, exported = models[name]
        accuracy = (held_out_accuracy(exported, args.data)
                    if args.data and given[name] else {})
        for backend in args.backends:
            model = exported if backend == "onnx" else run
            for precision in args.precisions if backend == "onnx" else ["fp32"]:
                for views in args.views:
                    for batching in (True, False) if views == args.views[0] else (True,):
                        print(f"{name} {backend} {precision} views {views} batching {'on' if batching else 'off'} ...",
                              end=" ", flush=True)
                        c = load_case(name, backend, batching, model, args, script, work, precision, views)
                        c["accuracy"] = accuracy.get((backend.partition("-")[0], precision, views))
                        cases.append(c)
                        print(f"{c['predictions_s']:,.0f} pred/s, p99 {c['p99_ms']:.1f} ms, {c['errors']} errors",
                              flush=True)
            for precision in (args.precisions if backend == "onnx" else ["fp32"] if backend == "torch" else []):
                latency.append({"network": name, "backend": backend, "precision": precision,
                                "cold": cold_predict(model, backend, args.image, args.cold_runs, precision),
                                "in_process": in_process(model, backend, args.image, args.calls, precision)})

    matmul_after = matmul_gflops(2048, 7)
    settings = {"duration": args.duration, "warmup": args.warmup, "connections": args.connections,
                "wrk_threads": args.wrk_threads, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                "image_bytes": args.image.stat().st_size, "image_side": "x".join(map(str, Image.open(args.image).size)),
                "given_runs": any(given[n] for n in args.cases), "quick": args.quick,
                "data": str(args.data) if args.data else None, "cpu_int8": int8_class(),
                "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    matmul = {"before": matmul_before, "after": matmul_after}
    print()
    print(format_table(cases, latency, matmul, host, settings))
    targets = target_lines(cases)
    print("\n".join(targets))

    out = Path(args.json) if args.json else HERE / "results" / f"serve-cpu{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "serve", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "git": git_commit(), "host": host, "settings": settings, "matmul": matmul, "cases": cases,
              "latency": latency, "targets": targets,
              "notes": {"weights": "one-epoch training on synthetic images unless runs were given: throughput "
                                   "does not depend on accuracy",
                        "errors": "wrk's non-2xx answers plus its connect/read/write/timeout socket errors",
                        "mean_batch": "images per forward pass, from the server's /health counters",
                        "cold": "whole `alexnet predict MODEL IMAGE` processes, a new interpreter each"}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 1 if any(c["errors"] for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
