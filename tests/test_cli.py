"""End to end through the command line, as a user runs it: train, evaluate, predict, info."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.engine.checkpoint import load_checkpoint
from conftest import TRAIN_FLAGS, run_cli

def test_train_writes_a_complete_run_folder(trained_run):
    for name in ["last.pt", "best.pt", "config.json", "history.csv", "history.json"]:
        assert (trained_run / name).is_file(), name
    rows = list(csv.DictReader(open(trained_run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"}
    config = json.loads((trained_run / "config.json").read_text())
    assert config["classes"] == ["cat", "dog", "ship"]
    assert config["config"]["train"]["epochs"] == 2 and "torch" in config["versions"]
    # Boxes with the same CPU model name differ in the vector ISA torch dispatches to, and in speed with it
    # (test_device.py checks the value follows torch's dispatch).
    assert config["hardware"]["cpu_isa"] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "NO AVX"}
    # `--amp auto` is bf16 on a CPU with bf16 instructions and fp32 elsewhere: the folder says which it was,
    # judged here from the CPU's own flags.
    if config["hardware"]["device"] == "cpu":
        flags = set()
        if os.path.exists("/proc/cpuinfo"):
            line = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "flags:")
            flags = set(line.split(":", 1)[1].split())
        if not flags:
            pytest.skip("no /proc/cpuinfo flags to judge the precision by")
        assert config["precision"] == ("bf16" if {"avx512_bf16", "amx_bf16", "amx_tile"} & flags else "fp32")
    assert not list(trained_run.glob("*.tmp")), "no temp files may be left behind"


def test_training_on_every_image_keeps_the_last_epoch_as_best_and_reports_on_the_training_split(
        tiny_folder, tmp_path):
    # `--val-split 0` (a final run on the full training set): no epoch has a score, best.pt is the last epoch's
    # weights, and the closing report evaluates the training split, all 120 images.
    run = tmp_path / "full"
    result = run_cli("train", "--data", tiny_folder, "--out", run, *TRAIN_FLAGS, "--val-split", "0")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_acc"] == "nan" for r in rows)
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert json.loads((run / "report" / "metrics.json").read_text())["num_samples"] == 120


def test_evaluate_prints_tables_and_writes_json(trained_run, tiny_folder, tmp_path):
    out = tmp_path / "m.json"
    result = run_cli("evaluate", trained_run / "best.pt", "--data", tiny_folder, "--json", out)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 30 and metrics["classes"] == ["cat", "dog", "ship"]
    assert metrics["top5"] is None  # three classes: top-5 is meaningless
    assert np.array(metrics["confusion_matrix"]).sum(axis=1).tolist() == [10, 10, 10]
    assert metrics["accuracy"] > 0.5  # the classes differ by colour: two epochs learn it


def test_a_held_out_class_folder_is_the_test_split_all_of_it(trained_run, tiny_folder, tmp_path):
    # `--data DIR/test` is a plain class folder: evaluating and reporting on it uses every image in it.
    out = tmp_path / "held.json"
    result = run_cli("evaluate", trained_run / "best.pt", "--data", tiny_folder / "test", "--json", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["num_samples"] == 30
    report = run_cli("report", trained_run, "--data", tiny_folder / "test", "--split", "test",
                     "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["num_samples"] == 30


def test_a_held_out_archive_holding_only_test_is_the_test_split(trained_run, tiny_folder, tmp_path):
    # Packed like the training tarball (test/<class>/NNNN.png), passed as it is.
    import tarfile

    archive = tmp_path / "held-out-test.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_folder / "test", arcname="test")
    out = tmp_path / "held.json"
    result = run_cli("evaluate", trained_run / "best.pt", "--data", archive, "--json", out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 30 and metrics["classes"] == ["cat", "dog", "ship"]


def test_predict_takes_any_size_and_mode_and_prints_json(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, mode, size in [("a.jpg", "RGB", (50, 40)), ("b.png", "RGBA", (32, 32)), ("c.png", "L", (17, 64)),
                             ("d.png", "P", (100, 100))]:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        img.save(tmp_path / name)
        paths.append(tmp_path / name)
    result = run_cli("predict", trained_run / "best.pt", *paths, "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["image"] for r in out] == [str(p) for p in paths]
    for r in out:
        assert len(r["predictions"]) == 2
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_matches_evaluation_preprocessing(trained_run, tiny_folder):
    """A test image predicted from its file gets the probabilities evaluation computes for it."""
    import alexnet
    from alexnet.inference import eval_data, probabilities

    loaded = alexnet.load_model(trained_run / "best.pt", device="cpu")
    # fp32 on both sides: predict computes in fp32, evaluation in the run's precision (bf16 on some CPUs).
    probs = probabilities(loaded, eval_data(loaded, str(tiny_folder), "test").loader, amp="off")[0]
    first = sorted((tiny_folder / "test" / "cat").glob("*.png"))[0]
    pred = alexnet.predict(loaded, [first], top_k=3)[0]["predictions"]
    assert pred[0]["probability"] == pytest.approx(probs.max(), abs=1e-5)


def test_info_prints_keras_style_summary_with_paper_parameter_counts():
    result = run_cli("info", "--model", "alexnet", "--num-classes", "1000")
    assert result.returncode == 0, result.stderr
    assert "62,378,344" in result.stdout and "Output shape" in result.stdout
    two = run_cli("info", "--model", "alexnet", "--num-classes", "1000", "--groups", "2")
    assert "60,965,224" in two.stdout


def test_a_run_with_a_custom_pooling_layout_reloads_for_evaluation(tiny_folder, tmp_path):
    # --pools, --pool-size, --global-pool, --conv1-kernel and --init are saved in the run's config and rebuilt by
    # evaluate from the checkpoint; airbench's batch-norm settings leave every saved batch-norm scale at 1.
    run = tmp_path / "pooled"
    flags = ["--widths", "8,8,16,16,16", "--hidden", "0", "--pools", "2,3,4", "--pool-size", "3", "--global-pool",
             "--conv1-kernel", "2"]
    result = run_cli("train", "--data", tiny_folder, "--out", run, "--epochs", "1", "--batch-size", "16",
                     "--no-report", *flags, "--init", "dirac", "--no-bn-scale", "--bn-bias-lr", "64",
                     env={"ALEXNET_DATA": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    # The run ends by saying where it is, how good it got and how to get its report.
    val_acc = json.loads((run / "history.json").read_text())[0]["val_acc"]
    tail = result.stdout.strip().splitlines()[-4:]
    assert tail[:2] == [f"run folder: {run}",
                        f"best validation accuracy: {val_acc * 100:.2f}% at epoch 1 (weights in {run / 'best.pt'})"]
    # 4 of each class's 40 images are held out: always answering the first class scores a third.
    assert "chance is 33.33% (always answering 'cat', the largest class)" in tail[2]
    assert tail[3] == f"no HTML report written; `alexnet report {run}` writes it"
    saved = json.loads((run / "config.json").read_text())["config"]
    config = saved["model"]
    assert config["pools"] == [2, 3, 4] and config["global_pool"] is True and config["init"] == "dirac"
    assert config["pool_size"] == 3 and config["conv1_kernel"] == 2
    assert saved["train"]["bn_scale"] is False and saved["train"]["bn_bias_lr"] == 64
    weights = load_checkpoint(run / "best.pt")["model"]
    scales = [v for k, v in weights.items() if k.startswith("features.bn") and k.endswith(".weight")]
    biases = [v for k, v in weights.items() if k.startswith("features.bn") and k.endswith(".bias")]
    assert len(scales) == 5 and all(torch.equal(s, torch.ones_like(s)) for s in scales)
    assert any(b.abs().max() > 0 for b in biases)  # the biases did train
    evaluated = run_cli("evaluate", run / "best.pt", "--data", tiny_folder, "--json", tmp_path / "m.json")
    assert evaluated.returncode == 0, evaluated.stderr
    info = run_cli("info", *flags)
    assert "pool_global" in info.stdout and "pool1" not in info.stdout
