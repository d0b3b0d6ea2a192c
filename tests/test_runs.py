"""`alexnet runs`: the table of run folders, and the scores `evaluate` and `report` record in them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from alexnet.runs import EVALUATIONS, find_runs, read_run, record_evaluation
from conftest import run_cli


def fake_run(folder, model="alexnet-cifar", preset=None, epochs=4, val_accs=(0.5, 0.75, 0.625)):
    """A run folder as the trainer leaves it: config.json and history.json (no weights needed to list it)."""
    folder.mkdir(parents=True)
    config = {"config": {"data": {}, "model": {"name": model}, "train": {"epochs": epochs}, "preset": preset}}
    (folder / "config.json").write_text(json.dumps(config))
    history = [{"epoch": i + 1, "val_acc": acc, "seconds": 30.0} for i, acc in enumerate(val_accs)]
    (folder / "history.json").write_text(json.dumps(history))
    return folder


def test_runs_are_listed_oldest_first_with_their_best_scores(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "20240102-090000-alexnet", model="alexnet", preset="imagenet", val_accs=(0.25,))
    fake_run(root / "20240101-080000-alexnet-cifar", preset="cifar10-fast")
    fake_run(root / "group" / "20240103-100000-alexnet-cifar", val_accs=())  # stopped before an epoch ended
    (root / "exported").mkdir()
    (root / "exported" / "config.json").write_text(json.dumps({"format": "alexnet-model", "classes": ["a"]}))
    (root / "notes").mkdir()
    result = run_cli("runs", root, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["started"] for r in rows] == ["2024-01-01T08:00:00", "2024-01-02T09:00:00", "2024-01-03T10:00:00"]
    first = rows[0]
    assert (first["model"], first["preset"], first["epochs"], first["epochs_planned"]) == ("alexnet-cifar",
                                                                                         "cifar10-fast", 3, 4)
    assert first["best_val_acc"] == 0.75 and first["best_epoch"] == 2 and first["seconds"] == 90.0
    assert first["test_acc"] is None and rows[2]["best_val_acc"] is None
    table = run_cli("runs", root)
    assert table.returncode == 0, table.stderr
    assert "75.00%" in table.stdout and "cifar10-fast" in table.stdout and "1.5m" in table.stdout
    assert "2024-01-03 10:00" in table.stdout and "exported" not in table.stdout


def test_evaluate_and_report_record_their_scores_and_runs_shows_the_test_one(trained_run, tiny_folder, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "runs" / "tiny")
    (run / EVALUATIONS).unlink(missing_ok=True)  # other tests evaluate the shared run: start with no record
    scored = tmp_path / "metrics.json"
    result = run_cli("evaluate", run, "--data", tiny_folder, "--split", "test", "--json", scored)
    assert result.returncode == 0, result.stderr
    accuracy = json.loads(scored.read_text())["accuracy"]
    report = run_cli("report", run, "--split", "train", "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    records = json.loads((run / EVALUATIONS).read_text())
    assert [(r["by"], r["split"]) for r in records] == [("evaluate", "test"), ("report", "train")]
    assert records[0]["accuracy"] == accuracy and records[0]["num_samples"] == 30
    assert records[1]["accuracy"] == json.loads((tmp_path / "report" / "metrics.json").read_text())["accuracy"]
    rows = json.loads(run_cli("runs", tmp_path / "runs", "--json").stdout)
    history = json.loads((run / "history.json").read_text())
    assert len(rows) == 1 and rows[0]["test_acc"] == accuracy
    assert rows[0]["best_val_acc"] == max(h["val_acc"] for h in history if h["val_acc"] is not None)
    assert f"{accuracy * 100:.2f}%" in run_cli("runs", tmp_path / "runs").stdout


def test_a_record_file_that_cannot_be_read_is_left_alone(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / EVALUATIONS).write_text("{not json")
    assert record_evaluation(run, {"accuracy": 0.5}, by="evaluate", split="test") is None
    assert (run / EVALUATIONS).read_text() == "{not json"
    assert record_evaluation(tmp_path, {"accuracy": 0.5}, by="evaluate", split="test") is None  # not a run
    assert read_run(run).evaluations == [] and len(find_runs(tmp_path)) == 1


def test_listing_runs_imports_no_torch(tmp_path):
    fake_run(tmp_path / "runs" / "one")
    code = ("import sys; from alexnet.cli import main; main(['runs', sys.argv[1]]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no torch")


def test_a_missing_folder_is_one_line(tmp_path):
    result = run_cli("runs", tmp_path / "nowhere")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nowhere" in result.stderr
