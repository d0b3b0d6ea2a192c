"""Transfer learning measured: pretrain on five CIFAR-10 classes, fine-tune on the other five with a few
images per class, against training from scratch on the same images with the same budget.

From the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg) it builds
    WORK/source/<airplane|automobile|bird|cat|deer>/   --pretrain-per-class images each (1,000)
    WORK/target/train/<dog|frog|horse|ship|truck>/     --shots images each (100: the small folder)
    WORK/target/test/<dog|frog|horse|ship|truck>/      --test-per-class other images each (500)
then runs, as `python -m alexnet` processes:
    train --data WORK/source                                   (once: the pretrained run)
    train --data WORK/target/train --val-split 0 --seed S      scratch: fresh weights
    ... the same + --init-from WORK/runs/source                 fine-tune: every layer trains
    ... the same + --init-from WORK/runs/source --freeze features   linear probe: the head alone trains
    evaluate RUN --data WORK/target --split test --json         each of them
Every variant takes the same flags (network, epochs, batch, rates), so the budget is the same; only the
starting weights (and, for the probe, what trains) differ. The classifier layer is replaced in both transfer
variants: the source run's classes are other ones.

    python benchmarks/transfer.py --archive cifar10-jpeg-train.tar.gz --seeds 0 1 2 \\
        --json benchmarks/results/transfer.json

Prints one line per run, then a table (mean and spread over seeds) and writes JSON with every run.
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
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")
# One recipe for every run: the default network (alexnet-cifar, 24-48-96-192-192, Muon on conv2-conv5), with
# batches small enough that 500 images still make 10 steps an epoch, and no HTML report (not measured here).
COMMON = ["--batch-size", "50", "--no-report", "--quiet", "--val-every", "0"]
# Pretraining: the same recipe at its own batch of 256 (10,000 images), validated once at the end.
PRETRAIN = ["--no-report", "--quiet", "--val-every", "0"]
VARIANTS = {
    "scratch": [],
    "fine-tune": ["--init-from", "{source}"],
    "linear probe": ["--init-from", "{source}", "--freeze", "features"],
}


class BenchError(Exception):
    pass


def extract(archive: Path, into: Path) -> Path:
    """The archive's train/ folder, extracted once into `into` (tarfile's "data" filter: no links out)."""
    root = into / "extracted"
    if not (root / "train").is_dir():
        tmp = Path(tempfile.mkdtemp(dir=into))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, root)
    return root / "train"


def copy_images(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)


def build_folders(train: Path, work: Path, pretrain_per_class: int, shots: int, test_per_class: int) -> dict:
    """The source folder and the target's train/test folders (disjoint images), rebuilt from scratch."""
    for name in ("source", "target"):
        shutil.rmtree(work / name, ignore_errors=True)
    for c in SOURCE_CLASSES:
        copy_images(sorted((train / c).glob("*.jpg"))[:pretrain_per_class], work / "source" / c)
    for c in TARGET_CLASSES:
        files = sorted((train / c).glob("*.jpg"))
        if len(files) < shots + test_per_class:
            raise BenchError(f"class {c} has {len(files)} images, fewer than {shots} + {test_per_class}")
        copy_images(files[:shots], work / "target" / "train" / c)
        copy_images(files[shots:shots + test_per_class], work / "target" / "test" / c)
    return {"source": work / "source", "target": work / "target"}


def alexnet(*args: str | Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "alexnet", *map(str, args)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed (exit {result.returncode}): {result.stderr.strip()[-800:]}")
    return wall, result


def train_seconds(run: Path) -> float:
    """Seconds inside the epochs (training and validation), from the run's history.json."""
    return sum(h["seconds"] for h in json.loads((run / "history.json").read_text()))


def train_and_score(name: str, data: Path, test_data: Path, out: Path, flags: list[str], env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall, _ = alexnet("train", "--data", data, "--out", out, *flags, env=env)
    scores = out.parent / f"{out.name}-test.json"
    alexnet("evaluate", out, "--data", test_data, "--split", "test", "--json", scores, env=env)
    metrics = json.loads(scores.read_text())
    config = json.loads((out / "config.json").read_text())
    return {"variant": name, "command": " ".join(["alexnet", "train", "--data", str(data), "--out", str(out),
                                                  *flags]),
            "wall_s": round(wall, 2), "train_s": round(train_seconds(out), 2), "test_acc": metrics["accuracy"],
            "test_images": metrics["num_samples"], "precision": config.get("precision"),
            "hardware": config.get("hardware")}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        if not mine:
            continue
        accs = [r["test_acc"] for r in mine]
        rows.append({"variant": name, "seeds": len(mine), "test_acc_mean": statistics.mean(accs),
                     "test_acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "test_acc_min": min(accs), "test_acc_max": max(accs),
                     "train_s_mean": statistics.mean(r["train_s"] for r in mine),
                     "wall_s_mean": statistics.mean(r["wall_s"] for r in mine)})
    return rows


def format_table(rows: list[dict], pretrain: dict) -> str:
    lines = [f"{'variant':<14}{'seeds':>6}{'test acc':>11}{'sd':>7}{'range':>16}{'train s':>9}{'wall s':>8}"]
    for r in rows:
        span = f"{100 * r['test_acc_min']:.1f}-{100 * r['test_acc_max']:.1f}"
        lines.append(f"{r['variant']:<14}{r['seeds']:>6}{100 * r['test_acc_mean']:>10.2f}%"
                     f"{100 * r['test_acc_sd']:>7.2f}{span:>16}{r['train_s_mean']:>9.1f}{r['wall_s_mean']:>8.1f}")
    lines.append(f"pretraining (once): {pretrain['train_s']:.1f} s in epochs, {pretrain['wall_s']:.1f} s wall; "
                 f"source validation accuracy {100 * pretrain['val_acc']:.2f}%")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", required=True,
                   help="CIFAR-10 as JPEGs: train/<class>/NNNN.jpg")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "alexnet-transfer"),
                   help="scratch folder for the images and runs")
    p.add_argument("--pretrain-per-class", type=int, default=1000)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--shots", type=int, default=100, help="target training images per class")
    p.add_argument("--test-per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=20, help="epochs of every target run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every run (default: torch's choice); 1 keeps a "
                                               "box shared with other jobs from stalling in thread spin-waits")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ALEXNET_DATA": str(work / "cache"),
           **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    folders = build_folders(extract(Path(args.archive), work), work, args.pretrain_per_class, args.shots,
                            args.test_per_class)
    source_run = work / "runs" / "source"
    shutil.rmtree(source_run, ignore_errors=True)
    wall, _ = alexnet("train", "--data", folders["source"], "--out", source_run, "--epochs", args.pretrain_epochs,
                      "--seed", "0", *PRETRAIN, env=env)
    history = json.loads((source_run / "history.json").read_text())
    pretrain = {"wall_s": round(wall, 2), "train_s": round(train_seconds(source_run), 2),
                "val_acc": history[-1]["val_acc"], "images": args.pretrain_per_class * len(SOURCE_CLASSES),
                "epochs": args.pretrain_epochs}
    print(f"pretrained on {pretrain['images']:,} images of {', '.join(SOURCE_CLASSES)}: {pretrain['wall_s']:.1f} s, "
          f"validation {100 * pretrain['val_acc']:.2f}%", flush=True)
    runs = []
    for seed in args.seeds:
        for name, extra in VARIANTS.items():
            flags = ["--val-split", "0", "--epochs", str(args.epochs), "--seed", str(seed), *COMMON,
                     *(e.format(source=source_run) for e in extra)]
            out = work / "runs" / f"{name.replace(' ', '-')}-seed{seed}"
            r = train_and_score(name, folders["target"] / "train", folders["target"], out, flags, env)
            r["seed"] = seed
            runs.append(r)
            print(f"{name:<13} seed {seed}: test {100 * r['test_acc']:.2f}% on {r['test_images']:,} images, "
                  f"{r['train_s']:.1f} s in epochs ({r['wall_s']:.1f} s wall)", flush=True)
    rows = summarize(runs)
    print()
    print(format_table(rows, pretrain))
    hardware = runs[0]["hardware"] if runs else {}
    result = {"benchmark": "transfer", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "hardware": hardware, "precision": runs[0]["precision"] if runs else None,
              "threads": args.threads, "load_average_1m_at_end": os.getloadavg()[0],
              "source_classes": SOURCE_CLASSES,
              "target_classes": TARGET_CLASSES, "shots_per_class": args.shots,
              "test_per_class": args.test_per_class, "target_epochs": args.epochs, "common_flags": COMMON,
              "pretrain": pretrain, "summary": rows, "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"transfer.py: error: {e}")
