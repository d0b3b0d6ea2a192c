"""A first run on one's own photos, measured: `alexnet train --data DIR --out RUN` with no preset and no
pretrained weights, then `alexnet evaluate RUN/best.pt --split test`, as the README tells a photo user.

The photo archives here have no test split, so the benchmark makes its own: each class's files are shuffled
(seeded) and dealt into --folds parts; fold k tests on part k and trains on the rest (DIR/train/<class>,
DIR/test/<class>). Every image is tested exactly once over the folds. Each training is one process with a
fresh, empty ALEXNET_DATA (a cold cache), timed from launch to exit.

Two kinds of folder:
  --archive A.tar.gz      a real photo folder packed as train/<class>/*.jpg (the ants/bees photos)
  --cifar-photos A.tar.gz a photo-like folder built from CIFAR-10's JPEGs: two classes (cat, dog), each
                          image scaled up to a random size and aspect (150-400 px a side), so the folder has
                          what a photo folder has (large images, mixed shapes) with CIFAR's hard pair in it

Printed: a table per fold (test accuracy, chance, the recipe's epochs, time, the largest epoch loss against
the first epoch's, restarts) and the mean; --json writes everything, with the fp32 matmul rate measured
before and after.

    python benchmarks/photos.py --archive photos-ants-bees-train.tar.gz --folds 3 --json photos.json
    python benchmarks/photos.py --cifar-photos cifar10-jpeg-train.tar.gz --per-class 200 --folds 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet.data.folder import IMAGE_EXTENSIONS  # noqa: E402
from matmul import matmul_gflops  # noqa: E402
from throughput import git_commit, host_info, host_name, resolve_device  # noqa: E402



def class_files(archive: Path, into: Path) -> dict[str, list[Path]]:
    """Unpack a train/<class>/*.jpg archive into `into`; {class: sorted files}."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    root = into / "train" if (into / "train").is_dir() else into
    return {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for c in sorted(root.iterdir()) if c.is_dir()}


def cifar_photos(archive: Path, into: Path, per_class: int, seed: int,
                 classes: tuple[str, ...] = ("cat", "dog")) -> dict[str, list[Path]]:
    """`per_class` CIFAR-10 JPEGs of each class, each resized (bicubic) to a random 150-400 px side and aspect."""
    rng = random.Random(seed)
    out: dict[str, list[Path]] = {c: [] for c in classes}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[1] not in out or len(out[parts[1]]) >= per_class:
                continue
            img = Image.open(tar.extractfile(member)).convert("RGB")
            w, h = rng.randint(150, 400), rng.randint(150, 400)
            path = into / parts[1] / Path(parts[2]).with_suffix(".jpg").name
            path.parent.mkdir(parents=True, exist_ok=True)
            img.resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)
            out[parts[1]].append(path)
            if all(len(v) >= per_class for v in out.values()):
                break
    return out


def make_fold(files: dict[str, list[Path]], folds: int, k: int, seed: int, root: Path) -> tuple[int, int]:
    """DIR/train and DIR/test for fold k (symlink-free copies); returns (train, test) image counts."""
    counts = [0, 0]
    for name, paths in files.items():
        order = list(paths)
        random.Random(f"{seed}-{name}").shuffle(order)
        for i, path in enumerate(order):
            split = "test" if i % folds == k else "train"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, root / split / name / path.name)
            counts[split == "test"] += 1
    return counts[0], counts[1]


def alexnet(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=3600)


def run_fold(data: Path, out: Path, extra: list[str]) -> dict:
    """Train with the default command (plus `extra`) from a cold cache, then score on the test split."""
    env = {**os.environ, "ALEXNET_DATA": tempfile.mkdtemp(prefix="alexnet-cold-")}
    start = time.perf_counter()
    trained = alexnet("train", "--data", data, "--out", out, "--no-report", *extra, env=env)
    seconds = time.perf_counter() - start
    if trained.returncode != 0:
        return {"error": trained.stderr.strip().splitlines()[-1] if trained.stderr.strip() else "failed",
                "seconds": seconds}
    scored = alexnet("evaluate", out / "best.pt", "--split", "test", "--json", "-", env=env)
    shutil.rmtree(env["ALEXNET_DATA"], ignore_errors=True)
    metrics = json.loads(scored.stdout)
    history = json.loads((out / "history.json").read_text())
    config = json.loads((out / "config.json").read_text())
    diverged = out / "diverged.json"
    losses = [row["train_loss"] for row in history]
    scored = [r["val_acc"] for r in history if isinstance(r["val_acc"], float) and r["val_acc"] == r["val_acc"]]
    return {"seconds": round(seconds, 1), "test_acc": metrics["accuracy"], "test_images": metrics["num_samples"],
            "chance": metrics["chance"], "best_val_acc": max(scored) if scored else None,
            "validated_epochs": len(scored), "epochs": len(history),
            "loss_ratio": max(losses) / losses[0], "restarts": len(json.loads(diverged.read_text()))
            if diverged.exists() else 0, "recipe": (config["config"].get("recipe") or {}).get("line"),
            "lr": config["config"]["train"]["lr"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", type=Path, help="a photo archive, train/<class>/*.jpg")
    src.add_argument("--cifar-photos", type=Path, metavar="CIFAR_JPEG_ARCHIVE",
                     help="build a photo-like cat/dog folder from CIFAR-10's JPEG archive")
    p.add_argument("--per-class", type=int, default=200, help="--cifar-photos: images per class (default 200)")
    p.add_argument("--folds", type=int, default=3, help="train/test folds; each image is tested once (default 3)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("extra", nargs="*", help="after --: flags passed to `alexnet train` (default: none)")
    a = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="alexnet-photos-"))
    try:
        if a.archive:
            files, name = class_files(a.archive, work / "all"), a.archive.name
        else:
            files = cifar_photos(a.cifar_photos, work / "all", a.per_class, a.split_seed)
            name = f"CIFAR-10 cat/dog as photos ({a.per_class} a class)"
        before = matmul_gflops()
        rows = []
        for k in range(a.folds):
            fold = work / f"fold{k}"
            train_n, test_n = make_fold(files, a.folds, k, a.split_seed, fold)
            result = run_fold(fold, work / f"run{k}", a.extra)
            rows.append({"fold": k, "train_images": train_n, **result})
            r = rows[-1]
            if "error" in r:
                print(f"fold {k}: failed after {r['seconds']:.1f} s: {r['error']}", flush=True)
                continue
            print(f"fold {k}: {train_n} train / {test_n} test  test {r['test_acc'] * 100:6.2f}%  "
                  f"(chance {r['chance']['accuracy'] * 100:.2f}%, above: {r['chance']['better']})  "
                  f"val {r['best_val_acc'] * 100 if r['best_val_acc'] is not None else float('nan'):.2f}%  {r['epochs']} epochs, {r['validated_epochs']} validated  "
                  f"{r['seconds']:.1f} s  max loss / first {r['loss_ratio']:.2f}  restarts {r['restarts']}",
                  flush=True)
        after = matmul_gflops()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in rows if "error" not in r]
    host = host_info(resolve_device("cpu"))
    summary = {}
    if ok:
        accs = [r["test_acc"] * 100 for r in ok]
        secs = [r["seconds"] for r in ok]
        pooled = sum(r["test_acc"] * r["test_images"] for r in ok) / sum(r["test_images"] for r in ok)
        summary = {"test_acc_mean": statistics.mean(accs), "test_acc_std": statistics.pstdev(accs),
                   "test_acc_pooled": pooled * 100, "seconds_mean": statistics.mean(secs),
                   "seconds_max": max(secs), "loss_ratio_max": max(r["loss_ratio"] for r in ok),
                   "restarts": sum(r["restarts"] for r in ok)}
        print(f"\n{name} on {host_name(host)}, matmul {before['gflops']:.1f} / {after['gflops']:.1f} GFLOP/s "
              f"(fp32, before / after)")
        print(f"test accuracy {summary['test_acc_mean']:.2f} +/- {summary['test_acc_std']:.2f}% over {len(ok)} "
              f"folds ({summary['test_acc_pooled']:.2f}% of all {sum(r['test_images'] for r in ok)} images), "
              f"{summary['seconds_mean']:.1f} s a run (longest {summary['seconds_max']:.1f} s), largest epoch loss "
              f"{summary['loss_ratio_max']:.2f}x the first, {summary['restarts']} restarts")
        print(ok[0]["recipe"])
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"dataset": name, "folds": rows, "summary": summary, "extra": a.extra,
                                      "matmul_before": before, "matmul_after": after, "host": host,
                                      "commit": git_commit(), "date": time.strftime("%Y-%m-%d")}, indent=2))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
