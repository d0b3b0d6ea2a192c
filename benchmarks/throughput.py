"""Training and inference throughput (images/s) of each AlexNet variant, with achieved FLOP/s.

For every case: build the model with `create_model` (10 classes), one fixed random batch, then
  train: forward + cross-entropy + backward + optimiser step (the preset's: SGD with Nesterov momentum, or
         Muon on conv2-conv5 where the preset says `optimizer: muon`), as `alexnet train` does;
  infer: forward in eval mode under torch.no_grad();
each timed as warm-up iterations then timed iterations, repeated --runs times, median kept.
Each case runs in its own fresh subprocess (this script with --single CASE) so peak resident
memory (getrusage ru_maxrss) belongs to that case alone.

A dense fp32 matmul rate (benchmarks/matmul.py) is measured in the same run before and after the
cases; quote every timing beside it, since the machine's speed drifts.

    python benchmarks/throughput.py                      # all cases, results/throughput-<device>.json
    python benchmarks/throughput.py --cases alexnet-cifar@32 alexnet-bn@227 --runs 5
    python benchmarks/throughput.py --quick              # smoke test: 1 run, 1 warm-up, 2 iterations
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from matmul import matmul_gflops  # noqa: E402

from alexnet.config import PRESETS  # noqa: E402  (torch-free)
from alexnet.cpuinfo import cpu_model  # noqa: E402  (torch-free)
from alexnet.engine.device import autocast, cpu_isa, precision  # noqa: E402


def preset_case(preset: str) -> dict:
    """The network of a CIFAR preset, read from the preset itself so the two cannot drift apart."""
    model = dict(PRESETS[preset]["model"])
    return {"model": model.pop("name"), "options": model, "image_size": 32, "batch": 256,
            "optimizer": PRESETS[preset]["train"].get("optimizer", "sgd")}


# name -> how to build it. `upsample_from`: the recipe trains on 32 px data resized on the device.
CASES: dict[str, dict] = {
    # The three CIFAR presets' networks as committed (cifar10-best@32 was alexnet-cifar-best@32 in earlier
    # results); then earlier networks, kept for comparison: the full-width, 32- and 16-wide nets with the
    # paper's pooling (cifar10-best, cifar10 and cifar10-fast before they moved on); the 227 px paper networks.
    "cifar10-fast@32": preset_case("cifar10-fast"),
    "cifar10@32": preset_case("cifar10"),
    "cifar10-best@32": preset_case("cifar10-best"),
    "alexnet-cifar@32": {"model": "alexnet-cifar", "options": {"hidden": 0, "dropout": 0.0, "pool_first": True},
                         "image_size": 32, "batch": 256},
    "alexnet-cifar-32w@32": {"model": "alexnet-cifar",
                             "options": {"widths": (32, 64, 128, 128, 128), "hidden": 0, "dropout": 0.0,
                                         "pool_first": True},
                             "image_size": 32, "batch": 256},
    "alexnet-cifar-16w@32": {"model": "alexnet-cifar",
                             "options": {"widths": (16, 32, 64, 64, 64), "hidden": 0, "dropout": 0.0,
                                         "pool_first": True},
                             "image_size": 32, "batch": 256},
    "alexnet-bn@227": {"model": "alexnet", "options": {"norm": "batchnorm"}, "image_size": 227, "batch": 64,
                       "upsample_from": 32},
    "alexnet-lrn@227": {"model": "alexnet", "options": {"norm": "lrn"}, "image_size": 227, "batch": 64},
}
QUICK_BATCH = {32: 32, 227: 8}
RESULT_TAG = "THROUGHPUT_RESULT "
# CIFAR-10 channel statistics; any values do for timing the normalise + resize.
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def git_commit() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def host_info(device: torch.device) -> dict:
    info = {"cpu_model": cpu_model(), "cpu_isa": cpu_isa(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def host_name(host: dict) -> str:
    """'NVIDIA H200' or 'AMD EPYC (AVX512)': the CPU model name alone does not tell boxes apart. Result
    files written before the ISA was recorded have none."""
    if host.get("gpu"):
        return host["gpu"]
    return host.get("cpu_model", "?") + (f" ({host['cpu_isa']})" if host.get("cpu_isa") else "")


def machine_tag(host: dict, bf16: bool) -> str:
    """The result file's machine: 'avx512bf16', 'avx2', or the GPU's name ('nvidia-h100-80gb-hbm3')."""
    if host.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", host["gpu"].lower()).strip("-")
    isa = re.sub(r"[^a-z0-9]+", "", str(host.get("cpu_isa") or "cpu").lower())
    return isa + ("bf16" if bf16 else "")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("throughput.py: error: --device cuda but CUDA is not available here")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(step, iters: int, warmup: int, runs: int, device: torch.device) -> list[float]:
    """Seconds per iteration of `step`, one value per run (each after its own warm-up)."""
    out = []
    for _ in range(runs):
        for _ in range(warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        out.append((time.perf_counter() - start) / iters)
    return out


def run_case(name: str, *, device: torch.device, batch: int, runs: int, warmup: int, iters: int,
             channels_last: bool, amp: str = "auto") -> dict:
    """Measure one case in this process; returns a JSON-able dict."""
    from alexnet.data.memory import Normalizer
    from alexnet.engine.device import tune_cpu_allocator
    from alexnet.config import TrainConfig
    from alexnet.engine.optim import build_optimizer
    from alexnet.models import create_model
    from alexnet.summary import summarize

    spec = CASES[name]
    size = spec["image_size"]
    # As `alexnet train` does on CPU (ALEXNET_MALLOC_TUNE=0 measures without it).
    malloc_tuned = device.type == "cpu" and tune_cpu_allocator()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=10, image_size=size, **spec["options"])
    summary = summarize(model, (3, size, size))
    model = model.to(device=device, memory_format=memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The training recipe's optimiser: SGD, Nesterov momentum 0.9, weight decay on weights only; or Muon's
    # orthogonalised steps for the conv filters after the first, as the preset names.
    optimizer_name = spec.get("optimizer", "sgd")
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, muon_lr=1e-3, weight_decay=5e-4, optimizer=optimizer_name))
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    last_loss = [float("nan")]

    def train_step() -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss[0] = loss.detach()

    def infer_step() -> None:
        with torch.no_grad(), autocast(device, amp):
            model(x)

    model.train()
    train_s = time_loop(train_step, iters, warmup, runs, device)
    model.eval()
    infer_s = time_loop(infer_step, iters, warmup, runs, device)
    loss = float(last_loss[0])

    result = {
        "case": name, "model": spec["model"], "options": spec["options"], "image_size": size, "batch": batch,
        "channels_last": channels_last, "amp": precision(device, amp),
        "optimizer": type(optimizer).__name__, "params": summary.params,
        "macs_per_image": summary.macs,
        "train_img_s": batch / statistics.median(train_s), "train_img_s_runs": [batch / s for s in train_s],
        "infer_img_s": batch / statistics.median(infer_s), "infer_img_s_runs": [batch / s for s in infer_s],
        "final_train_loss": loss, "threads": torch.get_num_threads(), "malloc_tuned": malloc_tuned,
    }

    if spec.get("upsample_from"):
        # The notebook recipe: uint8 32 px batch on the device -> normalised float -> bilinear resize.
        small = spec["upsample_from"]
        normalize = Normalizer(MEAN, STD, size, device, channels_last=channels_last)
        raw = torch.randint(0, 256, (batch, small, small, 3), dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
        resize_s = time_loop(lambda: normalize(raw), iters, warmup, runs, device)
        resize_img_s = batch / statistics.median(resize_s)
        result.update({
            "resize_from": small, "resize_img_s": resize_img_s, "resize_img_s_runs": [batch / s for s in resize_s],
            # Per batch: resize time + training-step time (medians of separate loops).
            "train_with_resize_img_s": 1 / (1 / result["train_img_s"] + 1 / resize_img_s),
            "infer_with_resize_img_s": 1 / (1 / result["infer_img_s"] + 1 / resize_img_s),
        })

    # Peak resident memory of this process (Linux reports KiB), covering model, batch, activations.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        result["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2 ** 20
    return result


def add_rates(case: dict, ref_gflops: float, fp32_gflops: float) -> None:
    """Achieved model FLOP/s from MACs (conv + linear only, as alexnet.summary counts them).

    inference = 2 FLOPs per MAC; training = 3 x that (the backward pass costs about twice the
    forward: gradients w.r.t. both activations and weights), i.e. 6 x MACs per image. The fractions are of
    the matmul rate in the cases' own precision (bf16 under autocast) and, for training, of the fp32 rate.
    """
    macs = case["macs_per_image"]
    case["infer_gflops"] = 2 * macs * case["infer_img_s"] / 1e9
    case["train_gflops"] = 3 * 2 * macs * case["train_img_s"] / 1e9
    case["infer_frac_of_matmul"] = case["infer_gflops"] / ref_gflops
    case["train_frac_of_matmul"] = case["train_gflops"] / ref_gflops
    case["train_frac_of_fp32_matmul"] = case["train_gflops"] / fp32_gflops


def format_table(cases: list[dict], matmul: dict, host: dict, settings: dict) -> str:
    cols = [("case", 24, "<"), ("batch", 5, ">"), ("train img/s", 11, ">"), ("+resize img/s", 13, ">"),
            ("infer img/s", 11, ">"), ("GFLOP/s train", 13, ">"), ("% mm", 5, ">"),
            ("GFLOP/s infer", 13, ">"), ("% mm", 5, ">"), ("peak RSS MB", 11, ">")]
    if host["device"].startswith("cuda"):
        cols.append(("GPU peak MB", 11, ">"))

    def line(cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, cols)).rstrip()

    rows = []
    for c in cases:
        if "error" in c:
            rows.append(line([c["case"], "-", "error: " + c["error"][:60]]))
            continue
        cells = [c["case"], c["batch"], f"{c['train_img_s']:,.1f}",
                 f"{c['train_with_resize_img_s']:,.1f}" if "train_with_resize_img_s" in c else "-",
                 f"{c['infer_img_s']:,.1f}", f"{c['train_gflops']:,.1f}", f"{100 * c['train_frac_of_matmul']:.0f}",
                 f"{c['infer_gflops']:,.1f}", f"{100 * c['infer_frac_of_matmul']:.0f}", f"{c['peak_rss_mb']:,.0f}"]
        if len(cols) > len(cells):
            cells.append(f"{c.get('cuda_peak_allocated_mb', 0):,.0f}")
        rows.append(line(cells))
    header = line([name for name, _, _ in cols])
    rule = "-" * len(header)
    ref = matmul["reference"]
    notes = [
        f"device {host['device']} ({host_name(host)}), {host['torch_threads']} torch threads, torch {host['torch']}; "
        f"median of {settings['runs']} run(s) x {settings['iters']} timed iterations after {settings['warmup']} "
        f"warm-up; channels_last={settings['channels_last']}"
        + (f"; {settings['amp']} autocast" if settings["amp"] != "fp32" else "; fp32")
        + ("; glibc malloc tuned (no mmap for big blocks)" if any(c.get("malloc_tuned") for c in cases) else ""),
        f"{ref} matmul {matmul['before']['n']}^2: {matmul['before']['gflops']:.1f} GFLOP/s before, "
        f"{matmul['after']['gflops']:.1f} after, mean {matmul['mean_gflops']:.1f} (the '% mm' reference)",
        *([f"fp32 matmul: {matmul['fp32_before']['gflops']:.1f} before, {matmul['fp32_after']['gflops']:.1f} "
           f"after, mean {matmul['fp32_mean_gflops']:.1f}; training model FLOP/s against it: "
           + ", ".join(f"{c['case']} {100 * c['train_frac_of_fp32_matmul']:.0f}%" for c in cases if "error" not in c)]
          if ref != "fp32" else []),
        "GFLOP/s = 2 x MACs x img/s for inference, 3 x 2 x MACs x img/s for training (backward ~ 2x forward); "
        "MACs = conv + linear only",
        "+resize img/s: training including the on-device normalise + bilinear 32->227 resize of each uint8 batch "
        "(the notebook recipe); peak RSS: ru_maxrss of the case's own subprocess",
    ]
    return "\n".join([header, rule, *rows, rule, *notes])


def child_command(args: argparse.Namespace, case: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", case, "--device", args.device,
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.quick:
        cmd.append("--quick")
    if not args.channels_last:
        cmd.append("--no-channels-last")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + ["--amp", args.amp]


def run_child(args: argparse.Namespace, case: str) -> dict:
    proc = subprocess.run(child_command(args, case), stdout=subprocess.PIPE, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"case": case, "error": f"subprocess exited with {proc.returncode} and no result (see stderr above)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Training and inference images/s of the AlexNet variants.")
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="CASE",
                   help=f"which cases (default all): {', '.join(CASES)}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--runs", type=int, help="repeats; the median is kept (default 3)")
    p.add_argument("--warmup", type=int, help="untimed iterations before each run (default 2 CPU, 10 CUDA)")
    p.add_argument("--iters", type=int, help="timed iterations per run (default 10 CPU, 50 CUDA)")
    p.add_argument("--batch-size", type=int, help="override every case's batch size (default 256 at 32 px, 64 at 227 px)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW-contiguous tensors (the default is channels_last, as training)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="autocast as `alexnet train --amp` (auto: bf16 on CUDA and on CPUs with bf16 "
                        "instructions, fp32 elsewhere)")
    p.add_argument("--matmul-n", type=int, help="matmul side (default 2048 CPU, 4096 CUDA, 1024 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 run, 1 warm-up, 2 iterations, small batches")
    p.add_argument("--json", help="output file (default benchmarks/results/throughput-<device>.json; "
                                  "-quick.json with --quick)")
    p.add_argument("--single", metavar="CASE", help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = p.parse_args(argv)
    cases = [c for item in args.cases for c in item.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or (args.single and args.single not in CASES):
        p.error(f"unknown case(s) {', '.join(unknown or [args.single])}; choose from {', '.join(CASES)}")
    args.cases = cases
    cuda = resolve_device(args.device).type == "cuda"
    defaults = (1, 1, 2) if args.quick else (3, 10 if cuda else 2, 50 if cuda else 10)
    args.runs = args.runs or defaults[0]
    args.warmup = defaults[1] if args.warmup is None else args.warmup
    args.iters = args.iters or defaults[2]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    if args.single:
        size = CASES[args.single]["image_size"]
        batch = args.batch_size or (QUICK_BATCH.get(size, 8) if args.quick else CASES[args.single]["batch"])
        result = run_case(args.single, device=device, batch=batch, runs=args.runs, warmup=args.warmup,
                          iters=args.iters, channels_last=args.channels_last, amp=args.amp)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    host = host_info(device)
    n = args.matmul_n or (1024 if args.quick else 4096 if device.type == "cuda" else 2048)
    repeats = 3 if args.quick else 7
    # Under bf16 autocast (CUDA, or a CPU with bf16 instructions) bf16 matmul is the cases' reference;
    # fp32 is kept too.
    amp = precision(device, args.amp)
    ref = "bf16" if amp == "bf16" else "fp32"
    print(f"{host_name(host)}: {host['torch_threads']} threads, torch {host['torch']}, "
          f"{ref if ref != 'fp32' else 'no'} autocast", flush=True)
    kinds = list(dict.fromkeys(("fp32", ref)))
    before = {d: matmul_gflops(n, repeats, device, d) for d in kinds}
    print(f"{ref} matmul {n}^2 before: {before[ref]['gflops']:.1f} GFLOP/s", flush=True)

    cases = []
    for name in args.cases:
        start = time.perf_counter()
        print(f"{name} ...", end=" ", flush=True)
        c = run_child(args, name)
        cases.append(c)
        if "error" in c:
            print(c["error"], flush=True)
        else:
            print(f"train {c['train_img_s']:,.1f} img/s, infer {c['infer_img_s']:,.1f} img/s "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

    after = {d: matmul_gflops(n, repeats, device, d) for d in kinds}
    print(f"{ref} matmul {n}^2 after: {after[ref]['gflops']:.1f} GFLOP/s", flush=True)
    matmul = {"reference": ref, "before": before[ref], "after": after[ref],
              "mean_gflops": (before[ref]["gflops"] + after[ref]["gflops"]) / 2,
              "fp32_before": before["fp32"], "fp32_after": after["fp32"],
              "fp32_mean_gflops": (before["fp32"]["gflops"] + after["fp32"]["gflops"]) / 2}
    for c in cases:
        if "error" not in c:
            add_rates(c, matmul["mean_gflops"], matmul["fp32_mean_gflops"])

    settings = {"runs": args.runs, "warmup": args.warmup, "iters": args.iters, "channels_last": args.channels_last,
                "quick": args.quick, "batch_size_override": args.batch_size,
                "amp": amp}
    print()
    print(format_table(cases, matmul, host, settings))

    # --quick numbers are not measurements: keep them away from the real results file.
    out = Path(args.json) if args.json else HERE / "results" / f"throughput-{device.type}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "throughput", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "git": git_commit(), "host": host, "settings": settings, "matmul": matmul, "cases": cases,
              "notes": {"train_gflops": "3 x 2 x MACs x images/s (backward ~ 2x forward)",
                        "infer_gflops": "2 x MACs x images/s",
                        "frac_of_matmul": f"achieved GFLOP/s / mean of the {ref} matmul rate before and after",
                        "peak_rss_mb": "getrusage ru_maxrss of the case's own subprocess (MiB)",
                        "train_with_resize_img_s": "1 / (1/train + 1/resize): training from uint8 32 px "
                                                   "batches resized to 227 on the device"}}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 1 if any("error" in c for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
