"""Fine-tuning: torchvision's AlexNet weights load as they are, --init-from / --freeze / --lr-backbone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from alexnet.config import TrainConfig
from alexnet.engine.checkpoint import load_checkpoint, save_checkpoint
from alexnet.engine.finetune import Weights, backbone_scales, freeze, load_pretrained, read_weights
from alexnet.engine.optim import build_optimizer, build_scheduler
from alexnet.errors import AlexnetError
from alexnet.models import create_model
from conftest import TRAIN_FLAGS, run_cli, write_class_folder

# torchvision.models.alexnet().state_dict(), key by key (torchvision 0.x, alexnet-owt-7be5be79.pth).
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PHOTO_CLASSES = ["daisy", "rose", "tulip", "sunflower", "iris"]


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """A state dict in torchvision's exact layout (random values), as .pth and as .safetensors."""
    root = tmp_path_factory.mktemp("weights")
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in TORCHVISION_SHAPES.items()}
    torch.save(state, root / "alexnet-owt.pth")
    save_file(state, str(root / "alexnet-owt.safetensors"))
    return root / "alexnet-owt.pth", root / "alexnet-owt.safetensors", state


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("photos"), 10, size=64, classes=PHOTO_CLASSES)


def test_alexnet_torchvision_has_torchvisions_keys_and_shapes():
    model = create_model("alexnet-torchvision", num_classes=1000)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == TORCHVISION_SHAPES
    # The adaptive average pool takes any side from 63 px up; below it the maps vanish.
    assert create_model("alexnet-torchvision", num_classes=5, image_size=63)(torch.zeros(2, 3, 63, 63)).shape == (2, 5)
    with pytest.raises(AlexnetError, match="minimum 63"):
        create_model("alexnet-torchvision", num_classes=5, image_size=62)


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_a_torchvision_state_dict_loads_as_is(torchvision_files, kind):
    pth, safetensors, state = torchvision_files
    model = create_model("alexnet-torchvision", num_classes=1000)
    said: list[str] = []
    replaced = load_pretrained(model, read_weights(pth if kind == "pth" else safetensors), "alexnet-torchvision",
                               [str(i) for i in range(1000)], said.append)
    assert replaced == [] and not any("replaced" in line for line in said)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in TORCHVISION_SHAPES)


def test_finetuning_with_frozen_features_keeps_them_bit_identical_and_trains_a_new_head(torchvision_files, photos,
                                                                                         tmp_path):
    pth, _, state = torchvision_files
    run = tmp_path / "flowers"
    result = run_cli("train", "--preset", "finetune", "--data", photos, "--image-size", "64", "--resize", "64",
                     "--init-from", pth, "--freeze", "features", "--epochs", "1", "--batch-size", "8",
                     "--no-report", "--out", run)
    assert result.returncode == 0, result.stderr
    assert "init: classifier.6 replaced: 1000 -> 5 classes" in result.stderr
    last = load_checkpoint(run / "last.pt")
    for key in TORCHVISION_SHAPES:
        if key.startswith("features."):
            assert torch.equal(last["model"][key], state[key]), f"{key} changed although frozen"
    assert last["model"]["classifier.6.weight"].shape == (5, 4096)
    assert not torch.equal(last["model"]["classifier.1.weight"], state["classifier.1.weight"])  # trained on
    # The optimiser holds the six classifier tensors only; loaded ones at --lr-backbone, the new layer at --lr.
    groups = last["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 6
    assert sorted({round(g["initial_lr"], 12) for g in groups}) == [0.001, 0.01]
    # The preset's fixed ImageNet statistics are what evaluate, predict and export will feed the model with.
    config = json.loads((run / "config.json").read_text())
    assert config["input"]["mean"] == IMAGENET_MEAN and config["input"]["std"] == IMAGENET_STD
    assert list(last["input"]["mean"]) == IMAGENET_MEAN
    assert config["init"]["replaced"] == ["classifier.6"] and len(config["init"]["frozen"]) == 10


def test_a_run_folder_is_a_starting_point_and_its_finetuning_resumes_without_it(trained_run, tmp_path):
    # Start from a copy of a 3-class run on 2 new classes, freeze its convolutions (batch norms included), stop
    # after one epoch, delete the source, resume: the frozen part still equals the source's weights.
    source = shutil.copytree(trained_run, tmp_path / "source")
    data = write_class_folder(tmp_path / "two", 30, classes=["plane", "truck"])
    run = tmp_path / "tuned"
    # No --no-whiten: --init-from turns the recipe's whitening off itself (it would overwrite conv1).
    result = run_cli("train", "--data", data, "--out", run, "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
                     "--init-from", source, "--freeze", "features", "--stop-after-epoch", "1")
    assert result.returncode == 0, result.stderr
    assert "init: classifier.fc8 replaced: 3 -> 2 classes" in result.stderr
    pretrained = load_checkpoint(source / "best.pt")
    pretrained = pretrained.get("ema", pretrained["model"])
    shutil.rmtree(source)
    resumed = run_cli("train", "--resume", run, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2
    frozen = [k for k in pretrained if k.startswith("features.")]
    assert any("running_mean" in k for k in frozen)  # batch-norm statistics are part of what stays
    assert all(torch.equal(last["model"][k], pretrained[k]) for k in frozen)
    assert json.loads((run / "config.json").read_text())["config"]["train"]["whiten"] is False


def test_weights_that_do_not_fit_are_one_line_naming_the_tensor(torchvision_files, photos, tmp_path):
    pth, _, _ = torchvision_files
    result = run_cli("train", "--data", photos, "--init-from", pth, "--out", tmp_path / "run", *TRAIN_FLAGS)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "features.0.weight" in result.stderr and "64x3x11x11" in result.stderr
    model = create_model("alexnet-torchvision", num_classes=5)
    wide = {k: torch.zeros(s) for k, s in TORCHVISION_SHAPES.items()}
    wide["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    with pytest.raises(AlexnetError, match=r"features\.3\.weight is 192x64x3x3 .* needs 192x64x5x5"):
        load_pretrained(model, Weights(wide, None, "wide.pth"), "alexnet-torchvision", PHOTO_CLASSES, print)
    with pytest.raises(AlexnetError, match="not a readable weights file"):
        read_weights(__file__)


def test_the_head_is_replaced_for_other_classes_even_at_the_same_count():
    model = create_model("alexnet-torchvision", num_classes=3)
    state = {k: torch.ones(s) for k, s in TORCHVISION_SHAPES.items()}
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.ones(3, 4096), torch.ones(3)
    said: list[str] = []
    load_pretrained(model, Weights(dict(state), ["cat", "dog", "ship"], "run"), "alexnet-torchvision",
                    ["cat", "dog", "ship"], said.append)
    assert torch.equal(model.classifier[6].weight, torch.ones(3, 4096)) and not any("replaced" in s for s in said)
    model = create_model("alexnet-torchvision", num_classes=3)  # a fresh model, as training builds one
    load_pretrained(model, Weights(dict(state), ["plane", "car", "bird"], "run"), "alexnet-torchvision",
                    ["cat", "dog", "ship"], said.append)
    assert not torch.equal(model.classifier[6].weight, torch.ones(3, 4096))
    assert "init: classifier.6 replaced: trained on other classes" in said[-2]


def test_a_run_folder_gives_its_ema_weights_and_an_exported_folder_its_classes(tmp_path):
    model = create_model("alexnet-cifar", num_classes=2, hidden=0, widths=(4, 4, 4, 4, 4))
    raw = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    ema = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": {"train": {}}}))
    save_checkpoint(tmp_path / "run" / "best.pt", {"model": raw, "ema": ema, "classes": ["a", "b"]})
    for source in (tmp_path / "run", tmp_path / "run" / "best.pt"):
        weights = read_weights(source)
        assert weights.classes == ["a", "b"] and all(torch.equal(weights.state[k], ema[k]) for k in ema)
    (tmp_path / "export").mkdir()
    save_file(raw, str(tmp_path / "export" / "model.safetensors"))
    (tmp_path / "export" / "config.json").write_text(json.dumps({"format": "alexnet-model", "classes": ["x", "y"]}))
    weights = read_weights(tmp_path / "export")
    assert weights.classes == ["x", "y"] and all(torch.equal(weights.state[k], raw[k]) for k in raw)
    with pytest.raises(AlexnetError, match="neither model.safetensors"):
        read_weights(tmp_path)


def test_freeze_up_to_a_named_layer_leaves_the_rest_to_the_optimiser():
    model = create_model("alexnet-torchvision", num_classes=5, image_size=63)
    frozen = freeze(model, "features.6", "alexnet-torchvision")
    assert frozen == ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
                      "features.6.weight", "features.6.bias"]
    optimizer = build_optimizer(model, TrainConfig(optimizer="sgd"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_optimizer) == (name not in frozen), name
    with pytest.raises(AlexnetError, match="choose one of: features, features.0"):
        freeze(model, "features.7", "alexnet-torchvision")


def test_frozen_batch_norms_keep_their_statistics_in_training_mode():
    model = create_model("alexnet-cifar", num_classes=2, hidden=0, widths=(4, 4, 4, 4, 4))
    freeze(model, "features", "alexnet-cifar")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(8, 3, 32, 32) * 3 + 1)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.startswith("features."))


def test_lr_backbone_scales_the_loaded_layers_all_along_the_schedule():
    model = create_model("alexnet-cifar", num_classes=2, hidden=0, widths=(4, 4, 4, 4, 4))
    cfg = TrainConfig(optimizer="muon", lr=0.1, muon_lr=0.2, lr_backbone=0.01, warmup_epochs=0, schedule="linear",
                      epochs=1)
    optimizer = build_optimizer(model, cfg, backbone_scales(model, ["classifier.fc8"], cfg.lr, cfg.lr_backbone))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    head = {id(p) for p in model.classifier.fc8.parameters()}

    def rates() -> set[tuple[bool, bool, float]]:
        return {(id(g["params"][0]) in head, g["muon"], round(g["lr"], 9)) for g in optimizer.param_groups}

    # Backbone SGD tensors at lr_backbone, Muon filters at muon_lr scaled alike, the new head at --lr.
    assert rates() == {(False, False, 0.01), (False, True, 0.02), (True, False, 0.1)}
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert rates() == {(False, False, 0.005), (False, True, 0.01), (True, False, 0.05)}  # half-way down
