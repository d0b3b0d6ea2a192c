"""`alexnet report` end to end: every file, and the same numbers as `alexnet evaluate --json`."""

from __future__ import annotations

import json

from PIL import Image

from alexnet.reports.plots import format_percent
from conftest import run_cli

PICTURES = ["curves.png", "confusion.png", "examples.png", "confused_pairs.png", "filters.png"]


def test_train_ends_with_a_report_on_the_validation_split(trained_run):
    report = trained_run / "report"
    for name in PICTURES + ["metrics.json", "report.html", "report.md"]:
        assert (report / name).is_file(), name
    assert json.loads((report / "metrics.json").read_text())["num_samples"] == 12  # 10% of 120


def test_report_numbers_equal_evaluate_json(trained_run, tiny_folder, tmp_path):
    out = tmp_path / "report"
    result = run_cli("report", trained_run, "--data", tiny_folder, "--split", "test", "--out", out)
    assert result.returncode == 0, result.stderr
    evaluated = run_cli("evaluate", trained_run / "best.pt", "--data", tiny_folder, "--split", "test",
                        "--json", tmp_path / "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads((tmp_path / "eval.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == expected
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    headline = format_percent(expected["accuracy"])
    assert headline in html and headline in md
    for name in PICTURES:
        with Image.open(out / name) as im:
            assert im.width >= 300 and im.height >= 150, name
    assert "http://" not in html and "https://" not in html and "<script" not in html.lower()


def test_the_report_reuses_the_final_validation_and_agrees_with_evaluate(trained_run, tmp_path, monkeypatch):
    import torch

    from alexnet import inference
    from alexnet.reports.build import build_report

    best = torch.load(trained_run / "best.pt", weights_only=True)
    logits, labels = best["val_logits"], best["val_labels"]
    assert logits.shape == (12, 3) and labels.shape == (12,)
    assert (logits.argmax(1) == labels).float().mean().item() == best["best_val_acc"]

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the report evaluated the validation split again")

    monkeypatch.setattr(inference, "probabilities", no_evaluation)
    monkeypatch.setattr("alexnet.reports.build.probabilities", no_evaluation)
    build_report(trained_run, out=tmp_path / "report")
    evaluated = run_cli("evaluate", trained_run / "best.pt", "--split", "val", "--json", tmp_path / "eval.json")
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads((tmp_path / "eval.json").read_text())
    reused = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert reused["accuracy"] == expected["accuracy"] and reused["confusion_matrix"] == expected["confusion_matrix"]


def test_saved_outputs_are_used_only_for_the_same_images(trained_run):
    from alexnet.inference import eval_data, load_model, saved_probabilities

    loaded = load_model(trained_run / "best.pt")
    ev = eval_data(loaded, None, "val")
    assert saved_probabilities(loaded, ev) is not None
    loaded.checkpoint["val_digest"] = "0" * 32  # other pixels (the data changed since training)
    assert saved_probabilities(loaded, ev) is None
    for key in ("val_logits", "val_labels", "val_digest"):  # a best.pt written before they were saved
        loaded.checkpoint.pop(key, None)
    assert saved_probabilities(loaded, ev) is None
