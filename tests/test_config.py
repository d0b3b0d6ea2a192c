"""Presets and flag overrides: what `alexnet train --preset P --flag V` resolves to."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alexnet.cli import build_parser, train_overrides
from alexnet.config import PRESETS, RunConfig, apply_overrides, preset_config, validate
from alexnet.errors import AlexnetError


def resolve(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["train", *argv])
    return validate(apply_overrides(preset_config(args.preset), train_overrides(args)))


def test_the_default_recipe_is_the_cifar10_preset():
    assert resolve().to_dict()["model"] == resolve("--preset", "cifar10").to_dict()["model"]
    assert resolve().train == replace(resolve("--preset", "cifar10").train, time_limit=0.0)


def test_naming_a_speed_preset_sets_its_time_limit_and_explicit_epochs_drop_it():
    assert resolve("--preset", "cifar10-fast").train.time_limit == 58
    assert resolve("--preset", "cifar10").train.time_limit == 295
    assert resolve().train.time_limit == 0  # the default recipe runs its epochs
    assert resolve("--preset", "cifar10-fast", "--epochs", "8").train.time_limit == 0
    assert resolve("--preset", "cifar10-fast", "--epochs", "8", "--time-limit", "90").train.time_limit == 90
    assert resolve("--preset", "cifar10-fast", "--widths", "8,16,32,32,32").train.time_limit == 58


def test_flags_override_the_preset_and_leave_the_rest():
    cfg = resolve("--preset", "cifar10-fast", "--epochs", "2", "--no-whiten")
    assert cfg.train.epochs == 2 and cfg.train.whiten is False
    assert cfg.train.label_smoothing == PRESETS["cifar10-fast"]["train"]["label_smoothing"]


def test_another_model_does_not_inherit_the_presets_model_options():
    # The default preset narrows alexnet-cifar; the paper network must not receive those widths.
    cfg = resolve("--model", "alexnet", "--norm", "batchnorm", "--image-size", "227")
    assert cfg.model.name == "alexnet" and cfg.model.widths is None and cfg.model.hidden is None
    assert cfg.model.norm == "batchnorm"


def test_widths_flag_reaches_the_model():
    cfg = resolve("--widths", "16,32,64,64,64", "--hidden", "256")
    assert cfg.model.options()["widths"] == (16, 32, 64, 64, 64) and cfg.model.hidden == 256


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_validates(name):
    cfg = validate(preset_config(name))
    assert cfg.preset == name


def test_unknown_preset_names_the_choices():
    with pytest.raises(AlexnetError, match="cifar10-fast"):
        preset_config("cifar100")


def test_report_flag_overrides_the_presets_choice():
    assert resolve().train.report is True  # the default recipe writes the HTML report
    assert resolve("--preset", "cifar10-fast").train.report is False  # its 60 s budget skips it
    assert resolve("--preset", "cifar10-fast", "--report").train.report is True
    assert resolve("--no-report").train.report is False


def test_new_model_and_validation_options_resolve_and_are_checked():
    cfg = resolve("--pool-first", "--hidden", "0", "--val-every", "3", "--tta-shift", "1")
    assert cfg.model.options()["pool_first"] is True and cfg.model.options()["hidden"] == 0
    assert cfg.train.val_every == 3 and cfg.train.tta_shift == 1
    for flags, message in ((("--val-every", "-1"), "--val-every"), (("--tta-shift", "9"), "--tta-shift")):
        with pytest.raises(AlexnetError, match=message):
            resolve(*flags)


def test_optimizer_flags_resolve_and_are_checked():
    cfg = resolve("--optimizer", "muon", "--muon-lr", "0.1", "--muon-momentum", "0.8")
    assert (cfg.train.optimizer, cfg.train.muon_lr, cfg.train.muon_momentum) == ("muon", 0.1, 0.8)
    assert resolve().train.optimizer == "muon"  # the default recipe (the cifar10 preset's) uses Muon
    assert resolve("--preset", "cifar10").train.muon_lr == 0.1 and resolve("--preset", "cifar10-fast").train.muon_lr == 0.08
    assert resolve("--preset", "cifar10-best").train.optimizer == "muon"
    for flags, message in ((("--muon-lr", "0"), "--muon-lr"), (("--muon-momentum", "1"), "--muon-momentum")):
        with pytest.raises(AlexnetError, match=message):
            resolve(*flags)


def test_a_network_without_batch_norm_falls_back_to_sgd_unless_muon_is_asked_for():
    # Muon fixes each conv's filter scale, which only batch norm after the conv makes harmless.
    assert resolve("--norm", "none").train.optimizer == "sgd"
    assert resolve("--model", "alexnet").train.optimizer == "sgd"  # the paper's LRN
    assert resolve("--model", "alexnet", "--norm", "batchnorm").train.optimizer == "muon"
    assert resolve("--norm", "none", "--lr", "0.1").train.lr == 0.1  # the rest of the recipe stays
    with pytest.raises(AlexnetError, match="--optimizer muon needs batch norm.*--norm batchnorm"):
        resolve("--norm", "none", "--optimizer", "muon")
