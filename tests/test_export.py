"""`alexnet export`: a model folder (safetensors + ONNX + config.json + card) that gives `alexnet predict`'s numbers."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import alexnet
from alexnet import cli
from alexnet.config import PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig, preset_config
from alexnet.data.pipeline import InputSpec, prepare_image
from alexnet.engine.checkpoint import load_checkpoint, save_checkpoint
from alexnet.engine.whitening import whiten_first_conv
from alexnet.errors import AlexnetError
from alexnet.export import export_model
from alexnet.models import create_model
from conftest import CLASSES, run_cli

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")

MEAN, STD = (0.45, 0.40, 0.35), (0.25, 0.20, 0.30)


def image_files(folder: Path) -> list[Path]:
    return sorted((folder / "test").rglob("*.png"))


def model_input(pixels: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> the network's float input, written out here independently of the package."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1) * 255) / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255)
    if x.shape[-1] != spec.image_size:
        x = nn.functional.interpolate(x, size=spec.image_size, mode="bilinear", align_corners=False)
    return x.contiguous()


def reinitialize(net: nn.Module) -> None:
    """He-normal weights: activations keep their scale through the layers, as in a trained network, so the
    logits depend on the image by more than float32 rounding (torch's default init shrinks them layer by layer)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)


def calibrate(net: nn.Module, x: torch.Tensor) -> None:
    """Batch-norm statistics away from (0, 1), and a class layer whose logits on the images `x` vary by ~3 with
    the image and are centred per class: a graph that drops or reorders any step (normalisation, resize, a view)
    then moves the probabilities by far more than the 1e-4 the check allows, and the top-1 differs by image."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        logits = net.eval()(x)
        scale = 3.0 / (logits - logits.mean(0)).std()
        last.weight.mul_(scale)
        last.bias.mul_(scale).sub_(logits.mean(0) * scale)


def make_checkpoint(path: Path, data: Path, cfg: RunConfig, spec: InputSpec, *, ema: bool = False) -> Path:
    """A checkpoint as training writes it, of a random-init network with the given config, calibrated on the
    test images of `data`."""
    cfg = replace(cfg, data=replace(cfg.data, source=str(data), image_size=spec.image_size))
    torch.manual_seed(0)
    net = create_model(cfg.model.name, num_classes=len(CLASSES), image_size=spec.image_size, **cfg.model.options())
    reinitialize(net)
    if cfg.train.whiten:  # the presets' whitened conv1: its filters come from image patches
        whiten_first_conv(net, torch.rand(64, 3, spec.image_size, spec.image_size))
    calibrate(net, model_input(np.stack([prepare_image(f, spec) for f in image_files(data)]), spec))
    state = {"model": net.state_dict(), "config": cfg.to_dict(), "classes": CLASSES, "image_size": spec.image_size,
             "input": spec.to_dict(), "model_name": cfg.model.name, "epoch": 3, "history": [], "best_val_acc": -1.0,
             "train_seconds": 1.0}
    if ema:
        state["ema"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                        for k, v in state["model"].items()}
    save_checkpoint(path, state)
    return path


def preset(name: str, **train) -> RunConfig:
    cfg = preset_config(name)
    return replace(cfg, train=replace(cfg.train, **train)) if train else cfg


def custom(model: dict, **train) -> RunConfig:
    return RunConfig(DataConfig(), ModelConfig(**model), TrainConfig(**train))


MEMORY32 = InputSpec("memory", 32, store_size=32, mean=MEAN, std=STD)
SMALL = custom({"name": "alexnet-cifar", "widths": (8, 8, 16, 16, 16)})  # the quickest to export
CIFAR_PRESETS = [name for name, p in PRESETS.items() if p["model"]["name"] == "alexnet-cifar"]
FAMILIES = {
    # The 2012 network: LRN, two towers, at its smallest input side (67 px, streamed photos); one view, as the
    # imagenet-paper preset evaluates.
    "paper-lrn-two-towers": (custom({"name": "alexnet", "norm": "lrn", "groups": 2}, tta=False),
                             InputSpec("stream", 67, resize=76, mean=MEAN, std=STD)),
    # The notebook recipe: batch norm, 32 px stored images upsampled inside the graph (to 67 px here, for speed).
    "notebook-batchnorm-upsampled": (custom({"name": "alexnet", "norm": "batchnorm"}, tta=True),
                                     InputSpec("memory", 67, store_size=32, mean=MEAN, std=STD)),
    **{f"preset-{name}": (preset(name), MEMORY32) for name in CIFAR_PRESETS},
    # Fine-tuning torchvision's layout (its adaptive average pool is not an identity below 224 px: 63 here).
    **({"preset-finetune": (preset("finetune"), InputSpec("stream", 63, resize=72, mean=MEAN, std=STD))}
       if "finetune" in PRESETS else {}),
    # Options no preset uses: airbench's 2x2 stem (32 -> 31 px), overlapping pools, hidden FC layers, no norm.
    "stem2-overlapping-hidden": (custom({"name": "alexnet-cifar", "widths": (24, 16, 16, 32, 32), "conv1_kernel": 2,
                                         "pool_size": 3, "hidden": 32, "norm": "none"}, tta=True, tta_shift=1),
                                 MEMORY32),
}


def test_the_presets_cover_every_alexnet_cifar_option_they_set():
    # What FAMILIES exercises; a new preset option shows up here.
    used = {k for name in CIFAR_PRESETS for k in PRESETS[name]["model"]} - {"name"}
    assert used >= {"widths", "pools", "hidden", "pool_first", "global_pool"}
    assert any(PRESETS[n]["train"].get("whiten") for n in CIFAR_PRESETS)
    assert any(PRESETS[n]["train"].get("tta_shift") for n in CIFAR_PRESETS)


def leftovers(folder: Path) -> list[str]:
    """Hidden temp folders an export would leave beside its --out if it cleaned up badly."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def predict_probabilities(model: Path, files: list[Path]) -> np.ndarray:
    """Full probability vectors from `alexnet.predict` (the reference the graph must reproduce)."""
    results = alexnet.predict(model, files, top_k=len(CLASSES), device="cpu")
    return np.array([[next(p["probability"] for p in r["predictions"] if p["class"] == c) for c in CLASSES]
                     for r in results])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_graph_gives_the_probabilities_alexnet_predict_gives(family, tiny_folder, tmp_path):
    cfg, spec = FAMILIES[family]
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_folder, cfg, spec)
    out = export_model(ckpt, tmp_path / "model", formats="onnx").out
    files = image_files(tiny_folder)
    pixels = np.stack([prepare_image(f, spec) for f in files])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    side = spec.store_size if spec.kind == "memory" else spec.image_size
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [side, side, 3])
    assert (outp.name, outp.type, outp.shape[1:]) == ("probabilities", "tensor(float)", [len(CLASSES)])
    # Any batch size: one image, then all 30 at once.
    onnx_probs = np.concatenate([session.run(None, {"images": pixels[:1]})[0],
                                 session.run(None, {"images": pixels[1:]})[0]])
    expected = predict_probabilities(ckpt, files)
    assert np.abs(onnx_probs - expected).max() <= 1e-4
    assert np.array_equal(onnx_probs.argmax(1), expected.argmax(1))
    assert len(set(expected.argmax(1))) > 1, "a model that predicts one class everywhere proves little"
    if cfg.train.tta:
        # The views are in the graph: one plain pass of the network gives clearly different numbers.
        with torch.no_grad():
            single = torch.softmax(alexnet.load_model(ckpt, device="cpu").model(model_input(pixels, spec)), 1).numpy()
        assert np.abs(single - expected).max() > 1e-3


def test_safetensors_reload_gives_the_checkpoints_outputs_from_its_ema_weights(tiny_folder, tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_folder, preset("cifar10"), MEMORY32, ema=True)
    out = export_model(ckpt, tmp_path / "model", formats="safetensors").out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    from safetensors.torch import load_file

    saved, state = load_file(out / "model.safetensors"), load_checkpoint(ckpt)
    assert saved.keys() == state["ema"].keys()
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)  # the averaged weights, as load_model uses
    assert not torch.equal(saved["features.conv2.weight"], state["model"]["features.conv2.weight"])
    a, b = alexnet.load_model(ckpt, device="cpu"), alexnet.load_model(out, device="cpu")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    assert (b.classes, b.spec, b.config) == (a.classes, a.spec, a.config)


def test_config_json_describes_model_input_views_and_says_accuracy_was_not_measured(tiny_folder, tmp_path):
    cfg, spec = FAMILIES["notebook-batchnorm-upsampled"]
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_folder, cfg, spec)
    out = export_model(ckpt, tmp_path / "model", formats="safetensors").out
    config = json.loads((out / "config.json").read_text())
    assert (config["format"], config["version"]) == ("alexnet-model", 1)
    assert config["model"] == {"name": "alexnet", "options": {"norm": "batchnorm"}, "num_classes": 3,
                               "image_size": 67,
                               "parameters": sum(p.numel() for p in alexnet.load_model(ckpt, "cpu").model.parameters())}
    assert config["classes"] == CLASSES
    assert config["input"] == {"kind": "memory", "image_size": 67, "store_size": 32, "resize": None,
                               "mean": list(MEAN), "std": list(STD)}
    assert config["input_side"] == 32  # the stored side: the graph upsamples to 67 itself
    assert config["views"] == {"tta": True, "tta_shift": 0, "passes": 2}
    assert config["metrics"]["accuracy"] is None  # the checkpoint's epoch was never validated
    assert config["run"] == load_checkpoint(ckpt)["config"]
    assert "not measured" in (out / "README.md").read_text().lower()


def test_a_failed_check_leaves_the_previous_export_as_it_was(tiny_folder, tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_folder, SMALL, MEMORY32)
    out = tmp_path / "model"
    export_model(ckpt, out, formats="safetensors")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from alexnet.export import parity

    real = parity.onnx_probabilities
    monkeypatch.setattr(parity, "onnx_probabilities", lambda graph, images: real(graph, images)[:, ::-1])
    with pytest.raises(AlexnetError, match="ONNX check failed, nothing written"):
        export_model(ckpt, out, check=tiny_folder, check_limit=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def cli_error(capsys, *argv: str) -> str:
    """Run `alexnet ARGV` in-process; it must fail with exit 2 and one line, no traceback."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_and_exit_2(tiny_folder, tmp_path, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", tiny_folder, SMALL, MEMORY32)
    out = str(tmp_path / "model")
    assert "does not exist" in cli_error(capsys, "export", str(tmp_path / "missing"), "--out", out)
    assert "unknown --format tflite" in cli_error(capsys, "export", str(ckpt), "--out", out, "--format", "onnx,tflite")
    assert "add onnx to --format" in cli_error(capsys, "export", str(ckpt), "--out", out, "--format", "safetensors",
                                               "--check", str(tiny_folder))
    # Never over a folder that is not a previous export (the run folder here), nor under a file.
    assert "holds other files" in cli_error(capsys, "export", str(ckpt), "--out", str(ckpt.parent))
    assert "cannot write there" in cli_error(capsys, "export", str(ckpt), "--out", str(ckpt / "model"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    assert "pip install 'alexnet[export]'" in cli_error(capsys, "export", str(ckpt), "--out", out)
    assert not Path(out).exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt"]


@pytest.fixture(scope="module")
def exported(trained_run, tiny_folder, tmp_path_factory):
    """`alexnet export RUN --out M --check DATA` through a real process: (M, its stdout)."""
    out = tmp_path_factory.mktemp("export") / "model"
    cache = tmp_path_factory.mktemp("cache")
    result = run_cli("export", trained_run, "--out", out, "--check", tiny_folder, env={"ALEXNET_DATA": str(cache)})
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_export_with_check_prints_the_parity_figures(exported, trained_run):
    out, stdout = exported
    # The run held out 10% of 3 x 40 images (4 per class): the check runs on those 12, its validation split.
    found = re.search(r"check: 12 images of the val split of .*: max \|p_torch - p_onnx\| = (\S+) .* top-1 agreement "
                      r"12/12", stdout)
    assert found, stdout
    assert float(found.group(1)) <= 1e-4
    parity = json.loads((out / "config.json").read_text())["parity"]
    assert parity["passed"] and parity["images"] == 12 and parity["max_abs_diff"] == pytest.approx(
        float(found.group(1)), rel=0.01)
    # The run's own score of these weights, and the split it is on.
    history = json.loads((trained_run / "history.json").read_text())
    best = max((h for h in history if h["val_acc"] is not None), key=lambda h: h["val_acc"])
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["split"] == "val" and metrics["num_samples"] == 12
    assert metrics["accuracy"] == pytest.approx(best["val_acc"], abs=1e-6)
    assert f"{best['val_acc'] * 100:.2f}% top-1" in (out / "README.md").read_text()


def test_nothing_in_the_folder_is_a_pickle(exported):
    out, _ = exported
    # Beside model.onnx (the run's views), the graphs that --views 1 and --views 2 run.
    passes = json.loads((out / "config.json").read_text())["views"]["passes"]
    fewer = [f"model.views-{k}.onnx" for k in (1, 2) if k < passes]
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "config.json", "model.onnx",
                                                            "model.safetensors", *fewer])
    for path in out.iterdir():
        head = path.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", f"{path.name} looks like a pickle or a torch zip"
    raw = (out / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert header["__metadata__"] == {"format": "alexnet-model"}
    import onnx

    onnx.checker.check_model(str(out / "model.onnx"))


def test_predict_and_evaluate_take_the_exported_folder_like_the_checkpoint(exported, trained_run, tiny_folder):
    out, _ = exported
    image = sorted((tiny_folder / "test" / "dog").glob("*.png"))[0]
    from_folder = run_cli("predict", out, image, "--json")
    from_checkpoint = run_cli("predict", trained_run / "best.pt", image, "--json")
    assert from_folder.returncode == 0 and from_checkpoint.returncode == 0, from_folder.stderr + from_checkpoint.stderr
    a, b = json.loads(from_folder.stdout)[0]["predictions"], json.loads(from_checkpoint.stdout)[0]["predictions"]
    assert [p["class"] for p in a] == [p["class"] for p in b]
    assert np.allclose([p["probability"] for p in a], [p["probability"] for p in b], atol=1e-4)
    metrics = [run_cli("evaluate", model, "--data", tiny_folder, "--json", "-") for model in (out, trained_run)]
    assert all(m.returncode == 0 for m in metrics), metrics[0].stderr + metrics[1].stderr
    assert json.loads(metrics[0].stdout) == json.loads(metrics[1].stdout)


def test_the_model_cards_onnxruntime_recipe_runs_without_torch_and_agrees_with_predict(exported, tiny_folder,
                                                                                       tmp_path):
    out, _ = exported
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    folder = shutil.copytree(out, tmp_path / "card")
    # A JPEG of another size than the model's 32 px: the recipe's resize and centre crop are exercised too.
    source = sorted((tiny_folder / "test" / "ship").glob("*.png"))[0]
    Image.open(source).resize((48, 40), Image.Resampling.BICUBIC).save(folder / "img.jpg", quality=95)
    guard = "import sys; sys.modules['torch'] = None\n"  # the recipe must not need torch
    result = subprocess.run([sys.executable, "-c", guard + code], cwd=folder, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    name, probability = result.stdout.split()
    (top,) = alexnet.predict(out, [folder / "img.jpg"], top_k=1, device="cpu")
    assert name == top["predictions"][0]["class"]
    assert float(probability) == pytest.approx(top["predictions"][0]["probability"], abs=1e-4)


def test_exporting_again_replaces_a_previous_export(exported, trained_run, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(exported[0], out)
    assert cli.main(["export", str(trained_run), "--out", str(out), "--format", "safetensors"]) == 0
    assert f"replaced the previous export in {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert leftovers(tmp_path) == []


def test_a_batch_norm_behind_a_pool_folds_into_its_convolution_only_when_that_is_exact():
    from alexnet.export.graph import fold_pooled_batchnorm

    torch.manual_seed(0)

    def network(scale_sign: float) -> nn.Module:
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
        for bn in (net[2], net[5]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data = torch.rand(4) + 0.1
            bn.bias.data.normal_()
        net[2].weight.data[1] *= scale_sign
        return net

    x = torch.randn(5, 3, 8, 8)
    for sign, folds in ((1.0, True), (-1.0, False)):
        net = network(sign)
        with torch.no_grad():
            expected = net(x)
            assert fold_pooled_batchnorm(net) == 1 + folds
            got = net(x)
        assert isinstance(net[5], nn.Identity)  # directly after a convolution: always exact
        assert isinstance(net[2], nn.Identity if folds else nn.BatchNorm2d)
        assert torch.allclose(got, expected, atol=1e-5)
        # max(a x + b) = a max(x) + b needs a > 0: with a negative a, moving the norm would change the output.
        if not folds:
            moved = nn.Sequential(net[0], net[2], net[1]).eval()
            with torch.no_grad():
                assert not torch.allclose(moved(x), net[2](net[1](net[0](x))), atol=1e-3)
