"""The front door stays honest: the README's commands run as written, and the repository speaks only of
the software, its hardware and its results."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

CLASSES = ["cat", "dog", "ship"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 8

# README commands this file runs, in the README's order, from a folder holding `my_photos/` (small
# class folders of 32 px JPEGs, as the README lays out). Each maps to the flags appended to keep it quick
# on two cores: argparse keeps the last value, so `--epochs 2` overrides the README's `--epochs 24`.
QUICK_TRAIN = ["--epochs", "1", "--batch-size", "16", "--no-report", "--quiet"]  # `alexnet report` follows
RUN = {
    "alexnet train --data my_photos --out runs/photos": QUICK_TRAIN,
    "alexnet evaluate runs/photos/best.pt --split test": [],
    "alexnet predict runs/photos/best.pt my_photos/test/cat/0001.jpg --top-k 3": [],
    "alexnet report runs/photos --split test": [],
    "alexnet train --resume runs/photos --epochs 24": ["--epochs", "2", "--quiet"],
    "alexnet info --model alexnet --groups 2 --num-classes 1000": [],
    "alexnet explain runs/photos/best.pt my_photos/test/cat/0001.jpg --out maps --json maps.json": [],
    "alexnet export runs/photos --out models/photos --check my_photos": [],
    "alexnet predict models/photos my_photos/test --csv predictions.csv": [],
}

# README commands not run here, each with the reason.
NOT_RUN = {
    "make train": "downloads CIFAR-10 and trains the default recipe for minutes",
    "make test": "runs the whole test suite, this file included",
    "python3 -m venv .venv && . .venv/bin/activate": "creates a virtual environment; the tests already run in one",
    "pip install -c constraints.txt -e .": "installs packages from the network",
    "alexnet train --data my_photos --preset finetune --init-from alexnet-owt-7be5be79.pth --out runs/ft": "needs "
    "torchvision's 233 MB weights file from the network; tests/test_finetune.py trains from a state dict of its "
    "exact layout",
    "alexnet evaluate runs/ft/best.pt --split test": "follows the fine-tuning run above",
    "alexnet predict runs/ft/best.pt my_photos/test/cat/0001.jpg": "follows the fine-tuning run above",
    "alexnet serve models/photos": "a server that runs until stopped; tests/test_serve.py and tests/test_browser.py "
    "start it and use it",
    "curl -F file=@my_photos/test/cat/0001.jpg http://127.0.0.1:8000/predict": "needs the server above; "
    "tests/test_serve.py posts the same multipart upload",
    "python benchmarks/serve.py -d 10 --cases cifar10 --run-cifar10 RUN --data cifar10-jpeg-train.tar.gz": "needs "
    "a trained cifar10 run and loads a server for minutes",
    "python benchmarks/faults.py": "about ten minutes of signals, kills, full disks and hostile files; "
    "tests/test_faults_suite.py runs its quick part",
    "alexnet train --data cifar10 --out runs/c10": "downloads CIFAR-10 and trains for minutes",
    "alexnet train --data cifar10 --preset cifar10-fast --out runs/fast": "downloads CIFAR-10",
    "python benchmarks/time_to_accuracy.py --data cifar10-jpeg-train.tar.gz --presets cifar10-fast cifar10 "
    "cifar10-best --seeds 0 1 2": "nine training runs on the 50,000 CIFAR-10 training images, over three hours",
    "alexnet train --data /data/imagenet --preset imagenet --workers 12 --out runs/in1k": "needs ImageNet (a GPU, "
    "in practice)",
    "torchrun --standalone --nproc-per-node=8 -m alexnet train --data /data/imagenet --preset imagenet "
    "--batch-size 1024 --lr 0.4 --workers 8 --out runs/in1k-8gpu": "needs ImageNet and 8 GPUs",
}


def bash_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks: continued lines joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def test_a_bash_block_is_read_command_by_command():
    text = "x\n```bash\na --b 1   # why\n\n# a comment\nc d \\\n    --e\n```\n```python\nnot(this)\n```\n"
    assert bash_commands(text) == ["a --b 1", "c d --e"]


def test_every_readme_command_is_run_here_or_listed_with_a_reason():
    commands = bash_commands(README.read_text())
    unchecked = [c for c in commands if c not in RUN and c not in NOT_RUN]
    assert not unchecked, f"README commands neither run by tests/test_docs.py nor listed in NOT_RUN: {unchecked}"
    stale = [c for c in [*RUN, *NOT_RUN] if c not in commands]
    assert not stale, f"tests/test_docs.py lists commands the README no longer has: {stale}"
    assert all(reason.strip() for reason in NOT_RUN.values())


def test_a_newcomer_reaches_a_trained_model_and_the_expected_figures_within_80_lines():
    first = "\n".join(README.read_text().splitlines()[:80])
    for needed in ("make train", "make test", "pip install", "alexnet train --data my_photos", "my_photos/train/",
                   "alexnet predict", "## What to expect", "`--preset cifar10`", "make train` / `alexnet train`"):
        assert needed in first, needed


def write_jpeg_folder(root: Path, per_class: int, seed: int) -> None:
    """32 px JPEGs whose class is visible (one bright colour channel), named 0000.jpg, 0001.jpg, ..."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
            img[..., c] += 120
            Image.fromarray(img).save(root / name / f"{i:04d}.jpg", quality=95)


def run_readme_command(command: str, cwd: Path):
    args = shlex.split(command)
    assert args[0] == "alexnet", command
    result = run_cli(*args[1:], *RUN[command], cwd=cwd)
    assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def check_readme_command(command: str, stdout: str, run: Path) -> None:
    """What the user relies on after each README command."""
    n_test = TEST_PER_CLASS * len(CLASSES)
    if command.startswith("alexnet train --data"):
        for name in ("best.pt", "last.pt", "config.json", "history.csv"):
            assert (run / name).is_file(), name
    elif command.startswith("alexnet evaluate"):  # --split test scores every image of my_photos/test/
        assert f"samples {n_test}" in stdout
    elif command.startswith("alexnet predict runs/"):  # one line: the image, its three classes, 100% in all
        line = stdout.strip()
        assert line.startswith("my_photos/test/cat/0001.jpg: ")
        found = re.findall(r"(\w+) (\d+\.\d)%", line)
        assert sorted(name for name, _ in found) == CLASSES
        assert sum(float(p) for _, p in found) == pytest.approx(100.0, abs=0.2)
    elif command.startswith("alexnet report"):  # the test images, into the run's report folder
        assert (run / "report" / "report.html").is_file()
        assert json.loads((run / "report" / "metrics.json").read_text())["num_samples"] == n_test
    elif command.startswith("alexnet train --resume"):  # the same run, now two epochs long
        assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    elif command.startswith("alexnet info"):  # the paper's two-tower network at 1000 classes
        assert "60,965,224" in stdout
    elif command.startswith("alexnet export"):  # a model folder, checked against onnxruntime
        model = run.parent.parent / "models" / "photos"
        passes = json.loads((model / "config.json").read_text())["views"]["passes"]
        fewer = [f"model.views-{k}.onnx" for k in (1, 2) if k < passes]  # what --views 1 and 2 run
        assert sorted(p.name for p in model.iterdir()) == sorted(["README.md", "config.json", "model.onnx",
                                                                  "model.safetensors", *fewer])
        assert re.search(r"top-1 agreement (\d+)/\1", stdout), stdout
    elif command.startswith("alexnet explain"):  # predict's line, an overlay and the map at the file's own size
        assert stdout.startswith("my_photos/test/cat/0001.jpg: ") and "peaks at" in stdout
        assert (run.parent.parent / "maps" / "0001-gradcam.png").is_file()
        (record,) = json.loads((run.parent.parent / "maps.json").read_text())
        heatmap = np.array(record["heatmap"])
        assert heatmap.shape == (32, 32) and 0 <= heatmap.min() and heatmap.max() <= 1
        assert record["class"] == stdout.split(": ", 1)[1].split()[0]  # the top class of the line
    elif command.startswith("alexnet predict models/photos"):  # every test image, one CSV row each
        rows = (run.parent.parent / "predictions.csv").read_text().splitlines()
        assert len(rows) == 1 + n_test and rows[0].startswith("image,class_1,probability_1")
    else:
        raise AssertionError(f"no check for {command!r}")


def test_the_readme_commands_run_on_a_small_folder_of_photos(tmp_path):
    write_jpeg_folder(tmp_path / "my_photos" / "train", TRAIN_PER_CLASS, seed=0)
    write_jpeg_folder(tmp_path / "my_photos" / "test", TEST_PER_CLASS, seed=1)
    commands = [c for c in bash_commands(README.read_text()) if c in RUN]
    assert commands == list(RUN), "the README reorders or drops the commands this test runs"
    for command in commands:
        stdout = run_readme_command(command, tmp_path).stdout
        check_readme_command(command, stdout, tmp_path / "runs" / "photos")


# The repository describes the software, its hardware and its results: how it was developed (who worked
# on it when, tracker numbers) stays out of every file and file name. The words are built from pieces so
# that this file does not match itself.
WORD = "sess" + "ion"
ISSUE = "iss" + "ue"
FORBIDDEN = re.compile(rf"\b{WORD}s?\b|\bissue\s*#?\d+|\bpull request\s*#?\d+", re.I)
# The same word as code, not prose: pytest's fixture scope, and an onnxruntime inference object.
ALLOWED = re.compile(rf"""scope=["']{WORD}["']|\b{WORD}(?=\.\w)|\b{WORD}\s*=(?!=)""")
SCANNED = [README, ROOT / "docs", ROOT / "benchmarks", ROOT / "src", ROOT / "tests"]
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if path.is_file() and not parts & SKIPPED_DIRS and not any(p.endswith(".egg-info") for p in parts):
                files.append(path)
    return files


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def offending_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if FORBIDDEN.search(ALLOWED.sub("", line))]


def test_the_check_tells_prose_from_code():
    assert offending_lines(f"measured in the third {WORD}.\nsee {ISSUE} 7\nfixed in {ISSUE.title()} #12")
    assert offending_lines(f"the {WORD}s of that week") and offending_lines(f"({WORD})")
    assert not offending_lines(f'@pytest.fixture(scope="{WORD}")\n{WORD} = ort.InferenceSession(path)\n'
                               f"out = self.{WORD}.run(None, feed)\nthe {ISSUE} is a tenth of it")


def test_no_file_or_file_name_speaks_of_development_sessions_or_tracker_numbers():
    files = scanned_files()
    assert len(files) > 50 and README in files
    bad_names = [str(p.relative_to(ROOT)) for p in files if FORBIDDEN.search(p.name)]
    assert not bad_names, bad_names
    bad = {}
    for path in files:
        text = text_of(path)
        if text is not None and (lines := offending_lines(text)):
            bad[str(path.relative_to(ROOT))] = lines[:3]
    assert not bad, bad
