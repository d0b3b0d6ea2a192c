"""The input half of the fault suite: hostile archives and images, through the paths users take.

Each archive case is built in a sandbox (the archive, a data cache holding an earlier entry, a folder
"outside" with a file in it) and read in a fresh process two ways: as training data (`--data X.tar.gz`,
read in memory) and by the CIFAR-10 extraction (written into the cache). A trial survives when the
process refuses in one line naming the archive and the rule or limit (or, for the control, reads it),
stderr holds nothing else (no traceback, no warning), nothing outside the cache changed, and the peak
memory stayed bounded (ru_maxrss growth, reported). Data lost counts trials that changed or removed a
file that was there before (the sentinel outside, the earlier cache entry).

The image cases (hostile named files, seeded random damage) are in faults_images.py.

    run_input_cases(quick, seed) -> [{"case", "trials", "survived", "data_lost", "detail"}, ...]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

import faults_images

MiB = 1 << 20
END = b"\0" * 1024
CIFAR = "cifar-10-batches-py"
CIFAR_MEMBERS = [f"{CIFAR}/{n}" for n in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                          "data_batch_5", "test_batch", "batches.meta")]
RSS_BOUND_MB = 64  # peak memory growth allowed while refusing a hostile archive (limit cases add theirs)

# --------------------------------------------------------------------------------------- archives


def _entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None,
           fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One header and its data, padded to whole blocks; ``size`` may lie about the data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if size is None else size
    return info.tobuf(fmt) + data + b"\0" * (-len(data) % 512)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def _zeros_gz(mib: int, fill: bytes = b"\0") -> bytes:
    return gzip.compress(fill * MiB) * mib  # concatenated gzip members: one valid stream, ~1 KB a MiB


def _names(variant: str) -> list[str]:
    """Member names a reader will read: images for an image archive, the batches for the CIFAR archive."""
    return ([f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(3)] if variant == "image"
            else CIFAR_MEMBERS[:6])


def _good(variant: str) -> bytes:
    if variant == "image":
        return b"".join(_entry(n, _png((40 * i, 200 - 30 * i, 9))) for i, n in enumerate(_names("image")))
    return _entry(CIFAR, kind=tarfile.DIRTYPE) + b"".join(_entry(n, n.encode() * 50) for n in CIFAR_MEMBERS)


def _head(variant: str) -> bytes:
    """The start of a hostile archive: a real first member (the CIFAR folder marks the CIFAR archive)."""
    return _entry(CIFAR, kind=tarfile.DIRTYPE) if variant == "cifar" else _entry("train/cat/ok.png", _png((1, 2, 3)))


def _bomb_members(variant: str, count: int, mib: int, fill: bytes = b"\0", names: list[str] | None = None) -> bytes:
    names = names or _names(variant)
    return b"".join(gzip.compress(_entry(names[k % len(names)], size=mib * MiB)[:512]) + _zeros_gz(mib, fill)
                    for k in range(count))


def archive_cases(quick: bool) -> list[dict]:
    """name, build(variant, sandbox) -> bytes (plain tar blocks are gzip-compressed), what a refusal must say,
    the environment of the reading process, the memory it may grow by, the variants that apply."""
    def one(kind: bytes, link: str = "") -> callable:
        return lambda v, box: _head(v) + _entry(_names(v)[0], kind=kind, link=link) + END

    cases = [
        dict(case="well-formed archive (control)", build=lambda v, box: _good(v) + END, says=None),
        dict(case="'..' in a member's path", says="points outside the archive",
             build=lambda v, box: _head(v) + _entry("../../outside/escape.png", b"x") + END),
        dict(case="absolute member path", says="points outside the archive",
             build=lambda v, box: _head(v) + _entry(str(box / "outside" / "abs.png"), b"x") + END),
        dict(case="symbolic link member", says="is a symbolic link", build=one(tarfile.SYMTYPE, "/etc/passwd")),
        dict(case="hard link member", says="is a hard link", build=one(tarfile.LNKTYPE, "/etc/passwd")),
        dict(case="device file member", says="is a device file", build=one(tarfile.CHRTYPE)),
        dict(case="FIFO member", says="is a FIFO", build=one(tarfile.FIFOTYPE)),
        dict(case="size field smaller than the data", says="claims a size that does not match its data",
             build=lambda v, box: _head(v) + _entry(_names(v)[0], b"y" * 3000, size=10) + _good(v) + END),
        dict(case="size field larger than the data", says="(truncated)",
             build=lambda v, box: _head(v) + _entry(_names(v)[0], b"y" * 100, size=50_000) + END),
        dict(case="truncated archive (half of it)", says="(truncated)",
             build=lambda v, box: gzip.compress(_good(v) + END)[: len(gzip.compress(_good(v) + END)) // 2]),
        dict(case="gzip bomb: one 2 GiB member in 2 MB", says="ALEXNET_MAX_MEMBER_BYTES",
             build=lambda v, box: gzip.compress(_head(v)) + _bomb_members(v, 1, 2048)),
        dict(case="gzip bomb: 24 MiB members past a 64 MiB archive limit", says="ALEXNET_MAX_ARCHIVE_BYTES",
             env={"ALEXNET_MAX_ARCHIVE_BYTES": "64M"}, rss=64 + RSS_BOUND_MB,
             build=lambda v, box: gzip.compress(_head(v)) + _bomb_members(v, 6, 24)),
        dict(case="extended (pax) header bomb", says="an extended header",
             build=lambda v, box: gzip.compress(_head(v) + _entry("././@PaxHeader", kind=tarfile.XHDTYPE,
                                                                  size=512 * MiB, fmt=tarfile.USTAR_FORMAT)[:512])
             + _zeros_gz(512)),
        dict(case="more members than ALEXNET_MAX_MEMBERS=50", says="ALEXNET_MAX_MEMBERS",
             env={"ALEXNET_MAX_MEMBERS": "50"},
             build=lambda v, box: _head(v) + b"".join(_entry(f"x/{i}.txt", b"z") for i in range(60)) + END),
        dict(case="zip file named .tar.gz", says="it is a zip file", build=lambda v, box: _zip()),
    ]
    if not quick:  # the default archive limit itself: 16 GiB inflated (members skipped, so memory stays flat)
        skipped = [f"x/{i}.bin" for i in range(20)]
        cases.append(dict(case="gzip bomb: 17 GiB of skipped members, default limit", says="ALEXNET_MAX_ARCHIVE_BYTES",
                          build=lambda v, box: gzip.compress(_head(v)) + _bomb_members(v, 17, 1024, names=skipped),
                          timeout=600))
    return cases


def _zip() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train/cat/0.png", _png((1, 1, 1)))
    return buf.getvalue()


_ARCHIVE_PROBE = r"""
import json, resource, sys
from alexnet.data.cifar10 import safe_extract
from alexnet.data.sources import read_source
from alexnet.errors import AlexnetError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for variant, archive, cache in zip(*[iter(sys.argv[1:])] * 3):
    try:
        if variant == "cifar":
            safe_extract(archive, cache)
        else:
            read_source(archive, cache, workers=1)
        code = 0
    except AlexnetError as exc:
        print(f"alexnet train: error: {exc}", file=sys.stderr, flush=True)  # as the command line says it
        code = 2
    rss = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1)
    print(json.dumps({"variant": variant, "exit": code, "rss_growth_mb": rss}), flush=True)
"""


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def _sandbox(base: Path, name: str, variant: str) -> tuple[Path, Path, Path]:
    """base/name/: outside/keep.txt (a file that was there), cache/ (with an earlier entry), the archive's path."""
    box = base / name
    (box / "outside").mkdir(parents=True)
    (box / "outside" / "keep.txt").write_text("a file that was here before")
    (box / "cache" / "archives").mkdir(parents=True)
    (box / "cache" / "archives" / "earlier-entry.npz").write_bytes(b"an earlier decoded dataset")
    return box, box / ("cifar-10-python.tar.gz" if variant == "cifar" else "images.tar.gz"), box / "cache"


def _write_archive(path: Path, data: bytes) -> None:
    path.write_bytes(data if data[:2] in (b"\x1f\x8b", b"PK") else gzip.compress(data))


def _archive_trials(index: int, case: dict, variants: list[str], base: Path) -> list[dict]:
    """Read the case's archive, built once per variant in its own sandbox, in one fresh process (the
    variants one after the other; the memory reported is the process's peak growth)."""
    boxes = []
    for variant in variants:
        box, archive, cache = _sandbox(base, f"{index}-{variant}", variant)
        _write_archive(archive, case["build"](variant, box))
        earlier = {p: p.read_bytes() for p in (box / "outside" / "keep.txt", cache / "archives" / "earlier-entry.npz")}
        boxes.append((variant, box, archive, cache, earlier, _snapshot(box, skip=cache)))
    argv = [str(x) for variant, _, archive, cache, _, _ in boxes for x in (variant, archive, cache)]
    try:
        proc = subprocess.run([sys.executable, "-c", _ARCHIVE_PROBE, *argv], capture_output=True, text=True,
                              env={**os.environ, **case.get("env", {})}, timeout=case.get("timeout", 120))
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        stdout, stderr, rc = "", "hung", None
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    lines = [line for line in stderr.splitlines() if line.strip()]
    refusals = iter(lines)
    trials = []
    for k, (variant, box, archive, cache, earlier, before) in enumerate(boxes):
        report = reports[k] if k < len(reports) else None
        problems = []
        if report is None:
            problems.append(f"no result (rc {rc}): {stderr.strip()[-300:]!r}")
        elif case["says"] is None:
            if report["exit"] != 0:
                problems.append(f"control not read: {next(refusals, '')!r}")
        elif report["exit"] != 2:
            problems.append("read, not refused")
        else:
            line = next(refusals, "")
            if str(archive) not in line or case["says"] not in line:
                problems.append(f"the line does not name the archive and {case['says']!r}: {line!r}")
        if _snapshot(box, skip=cache) != before:
            problems.append("something outside the cache changed")
        rss = report["rss_growth_mb"] if report else None
        if rss is None or rss > case.get("rss", RSS_BOUND_MB):
            problems.append(f"peak memory grew by {rss} MB")
        lost = any(not p.exists() or p.read_bytes() != b for p, b in earlier.items())
        trials.append({"ok": not problems and not lost, "lost": lost, "rss": rss,
                       "line": lines[0] if lines else "", "why": "; ".join(f"{variant}: {p}" for p in problems)})
        shutil.rmtree(box, ignore_errors=True)
    if "Traceback" in stderr or list(refusals) or rc != 0:  # anything beyond the one line per refusal
        trials[-1].update(ok=False, why=trials[-1]["why"] + f"; stderr or exit not clean (rc {rc}): "
                                                            f"{stderr.strip()[-300:]!r}")
    return trials


def _cli_trial(index: int, case: dict, base: Path) -> dict:
    """The full run's extra: `alexnet train --data <hostile image archive>` itself: one line, exit 2, no run."""
    box, archive, cache = _sandbox(base, f"{index}-cli", "image")
    _write_archive(archive, case["build"]("image", box))
    before = _snapshot(box, skip=cache)
    out = box / "run"
    proc = subprocess.run([sys.executable, "-m", "alexnet", "train", "--data", str(archive), "--out", str(out),
                           "--epochs", "1", "--batch-size", "2", "--quiet", "--no-report"], capture_output=True,
                          text=True, env={**os.environ, "ALEXNET_DATA": str(cache), **case.get("env", {})},
                          timeout=case.get("timeout", 300))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    ok = (proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
          and str(archive) in lines[0] and case["says"] in lines[0])
    after = {k: v for k, v in _snapshot(box, skip=cache).items() if not k.startswith("run")}
    ok = ok and after == before and not list(out.glob("**/*.pt"))
    shutil.rmtree(box, ignore_errors=True)
    return {"ok": ok, "lost": False, "why": "" if ok else f"cli: rc {proc.returncode}: {proc.stderr.strip()[-300:]!r}"}


def _archive_rows(quick: bool, base: Path) -> list[dict]:
    cases = archive_cases(quick)
    jobs = [(i, case, ["image"] if case["case"].startswith("zip") else ["image", "cifar"])  # CIFAR is never a zip
            for i, case in enumerate(cases)]
    if not quick:
        jobs += [(i, case, ["cli"]) for i, case in enumerate(cases) if case["says"] and not case.get("timeout")]

    def run(job):
        i, case, variants = job
        return [_cli_trial(i, case, base)] if variants == ["cli"] else _archive_trials(i, case, variants, base)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each job is its own process
        results = list(pool.map(run, jobs))
    rows = []
    for i, case in enumerate(cases):
        mine = [t for (j, _, _), trials in zip(jobs, results) if j == i for t in trials]
        rss = max((r["rss"] for r in mine if r.get("rss") is not None), default=0.0)
        why = "; ".join(r["why"] for r in mine if r["why"])
        said = next((r["line"].split(": error: ", 1)[-1] for r in mine if r.get("line")), "read")
        rows.append({"case": f"archive: {case['case']}", "trials": len(mine), "survived": sum(r["ok"] for r in mine),
                     "data_lost": sum(bool(r["lost"]) for r in mine),
                     "detail": f"{why or said[:200]} [peak memory +{rss:.0f} MB]"})
    return rows


def run_input_cases(quick: bool, seed: int) -> list[dict]:
    """Every input case; rows {"case", "trials", "survived", "data_lost", "detail"}. Quick: fewer random trials
    and no `alexnet train` runs."""
    with tempfile.TemporaryDirectory(prefix="alexnet-faults-") as tmp:
        base = Path(tmp)
        (base / "images").mkdir()
        rows = _archive_rows(quick, base / "archives")
        decoder = faults_images.Decoder(base / "decoders-stderr.txt")
        try:
            rows += faults_images.named_rows(decoder, base / "images")
            rows.append(faults_images.pixel_bomb_row(base / "images"))
            rows += faults_images.mutation_rows(decoder, base / "images", 30 if quick else 400, seed)
        finally:
            decoder.close()
    return rows
