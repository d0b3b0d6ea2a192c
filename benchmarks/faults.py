"""The fault suite: what `alexnet` does with hostile input and with a training run that is hurt.

Two halves, each a list of rows {"case", "trials", "survived", "data_lost", "detail"}:
  input     (faults_input.py): hostile tarballs and images, refused in one line or decoded right, nothing
            written outside the cache, memory bounded, no traceback, hang or crash;
  training  (faults_training.py, where present): signals, mid-epoch checkpoints, a full disk, SIGKILL.
A row survived when every trial did; the script exits 1 if any row did not, or lost data.

    python benchmarks/faults.py --quick                # seconds: fewer random trials, no `alexnet train` runs
    python benchmarks/faults.py --only input --json results/faults-input.json
    python benchmarks/faults.py --seed 3               # other random damage
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
HALVES = {"input": ("faults_input", "run_input_cases"), "training": ("faults_training", "run_training_cases")}


def format_table(rows: list[dict]) -> str:
    width = max([len("case")] + [len(r["case"]) for r in rows])
    lines = [f"{'case':<{width}}  trials  survived  data lost", "-" * (width + 29)]
    for r in rows:
        mark = "" if r["survived"] == r["trials"] and not r["data_lost"] else "   <-- FAILED"
        lines.append(f"{r['case']:<{width}}  {r['trials']:>6}  {r['survived']:>8}  {r['data_lost']:>9}{mark}")
    return "\n".join(lines)


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["survived"] != r["trials"] or r["data_lost"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer random trials and no `alexnet train` runs")
    p.add_argument("--only", choices=sorted(HALVES), help="run one half")
    p.add_argument("--seed", type=int, default=0, help="seed of the random damage")
    p.add_argument("--json", type=Path, help="also write the rows and the host here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    for half in [args.only] if args.only else list(HALVES):
        module_name, function = HALVES[half]
        if not (HERE / f"{module_name}.py").exists():
            if args.only:
                print(f"faults.py: error: --only {half}, but benchmarks/{module_name}.py is not there", file=sys.stderr)
                return 2
            print(f"({half} cases skipped: benchmarks/{module_name}.py is not there)", file=sys.stderr)
            continue
        started = time.perf_counter()
        half_rows = getattr(importlib.import_module(module_name), function)(args.quick, args.seed)
        seconds[half] = round(time.perf_counter() - started, 1)
        rows += half_rows
    print(format_table(rows))
    bad = failed(rows)
    print(f"\n{len(rows) - len(bad)} of {len(rows)} cases survived every trial"
          + "".join(f" ({h}: {s:.0f} s)" for h, s in seconds.items()))
    for r in bad:
        print(f"FAILED {r['case']}: {r['detail']}")
    if args.json:
        doc = {"benchmark": "faults", "date": _dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
               "seed": args.seed, "seconds": seconds, "host": {"python": platform.python_version(),
                                                               "platform": platform.platform()},
               "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
