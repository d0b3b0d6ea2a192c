"""The input half of the fault suite, quick mode, as CI runs it: every hostile case survives every trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"

# The cases a user relies on; a suite that stopped running one of them must not pass.
EXPECTED = {
    "archive: well-formed archive (control)": 2,
    "archive: '..' in a member's path": 2,
    "archive: absolute member path": 2,
    "archive: symbolic link member": 2,
    "archive: hard link member": 2,
    "archive: device file member": 2,
    "archive: FIFO member": 2,
    "archive: size field smaller than the data": 2,
    "archive: size field larger than the data": 2,
    "archive: truncated archive (half of it)": 2,
    "archive: gzip bomb: one 2 GiB member in 2 MB": 2,
    "archive: gzip bomb: 24 MiB members past a 64 MiB archive limit": 2,
    "image: pixel bomb: 130-byte PNG declaring 100000x100000": 2,
    "image: pixel bomb in a fresh process (stderr, memory)": 1,
    "image: truncated JPEG": 2,
    "image: text file named .jpg": 2,
    "image: CMYK JPEG": 2,
    "image: animated WebP (first frame)": 2,
    "image: EXIF-rotated JPEG": 2,
    **{f"image: random damage to {fmt} files": 30 for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF")},
}


def test_quick_input_faults_all_survive(tmp_path):
    out = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, str(SUITE), "--quick", "--only", "input", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    for case, trials in EXPECTED.items():
        assert rows[case]["trials"] == trials, case
    for case, row in rows.items():
        assert row["survived"] == row["trials"] and row["data_lost"] == 0, (case, row["detail"])
    # the table printed for people says the same
    assert f"{len(rows)} of {len(rows)} cases survived every trial" in result.stdout
