"""One process against N processes under torchrun, same data, seed and global batch.

    python benchmarks/ddp_compare.py --data DIR --nproc 2 -- --epochs 2 --batch-size 64 --norm none --dropout 0

Runs `torchrun --standalone --nproc-per-node=K -m alexnet train ...` for K = 1 and K = N, one after the
other, then prints a table and writes JSON (benchmarks/results/ddp_compare.json): wall seconds, final
train loss, val accuracy, and the largest absolute weight difference between the two runs' last.pt.
With batch norm or dropout the two runs legitimately differ (per-rank statistics, per-rank masks); use
`--norm none --dropout 0` to see the pure floating-point difference. On CPU each of the N processes
gets cores/N threads, so wall time compares the same machine split N ways.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def train(nproc: int, data: str, out: Path, extra: list[str], cache: Path) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alexnet", "train", "--data", data, "--out", str(out), "--quiet", "--no-report", *extra]
    env = {**os.environ, "ALEXNET_DATA": str(cache), "PYTHONPATH": str(HERE.parent / "src")}
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"ddp_compare: {nproc}-process run failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--json", default=str(HERE / "results" / "ddp_compare.json"))
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags for alexnet train")
    args = p.parse_args()
    extra = [a for a in args.extra if a != "--"]

    from alexnet.engine.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="ddp-compare-") as tmp:
        tmp = Path(tmp)
        rows = {}
        for n in (1, args.nproc):
            seconds = train(n, args.data, tmp / f"n{n}", extra, tmp / "cache")
            ckpt = load_checkpoint(tmp / f"n{n}" / "last.pt")
            rows[n] = {"processes": n, "wall_s": round(seconds, 2), "train_loss": ckpt["history"][-1]["train_loss"],
                       "val_acc": ckpt["history"][-1]["val_acc"], "weights": ckpt["model"]}
        a, b = rows[1].pop("weights"), rows[args.nproc].pop("weights")
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
        scale = max(a[k].double().abs().max().item() for k in a if a[k].is_floating_point())
    result = {"data": args.data, "extra": extra, "runs": list(rows.values()), "max_abs_weight_diff": diff,
              "max_abs_weight": scale}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\n{'processes':>9} {'wall s':>8} {'train loss':>11} {'val acc':>8}")
    for r in rows.values():
        print(f"{r['processes']:>9} {r['wall_s']:>8.1f} {r['train_loss']:>11.6f} {r['val_acc'] * 100:>7.2f}%")
    print(f"largest |weight difference| {diff:.3g} (largest |weight| {scale:.3g})")


if __name__ == "__main__":
    main()
