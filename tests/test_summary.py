"""Specification of the Keras-style model summary."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models import create_model
from alexnet.summary import format_summary, human_count, summarize


def test_totals_equal_the_models_parameter_count():
    # The default alexnet-cifar by hand: 3x3 convs without bias 3->64->128->256->256->256 (1,728 + 73,728 +
    # 294,912 + 589,824 + 589,824), batch norm 2 per channel (2 * 960), then fc 256*4*4 -> 1024 -> 1024 -> 10
    # with biases (4,195,328 + 1,049,600 + 10,250): 6,807,114.
    summary = summarize(create_model("alexnet-cifar"), (3, 32, 32))
    assert summary.params == 6_807_114
    assert summary.trainable_params == summary.params
    assert sum(row.params for row in summary.rows) == summary.params


def test_frozen_parameters_are_not_trainable():
    model = create_model("alexnet-cifar")
    model.features.conv1.weight.requires_grad_(False)
    summary = summarize(model, (3, 32, 32))
    assert summary.params - summary.trainable_params == 3 * 64 * 3 * 3


def test_rows_follow_execution_order_with_output_shapes_without_batch():
    summary = summarize(create_model("alexnet-cifar"), (3, 32, 32))
    first, last = summary.rows[0], summary.rows[-1]
    assert (first.name, first.type, first.output_shape) == ("features.conv1", "Conv2d", (64, 32, 32))
    assert (last.name, last.type, last.output_shape) == ("classifier.fc8", "Linear", (10,))


def test_paper_conv1_macs_at_227_are_105_415_200():
    summary = summarize(create_model("alexnet", num_classes=1000), (3, 227, 227))
    conv1 = summary.rows[0]
    assert conv1.name == "features.conv1"
    assert conv1.output_shape == (96, 55, 55)
    assert conv1.macs == 55 * 55 * 96 * 3 * 11 * 11 == 105_415_200


def test_only_conv_and_linear_layers_count_macs():
    summary = summarize(create_model("alexnet-cifar", hidden=32), (3, 32, 32))
    for row in summary.rows:
        assert (row.macs > 0) == (row.type in ("Conv2d", "Linear")), row.name
    assert summary.macs == sum(row.macs for row in summary.rows)


def test_grouped_conv_macs_divide_by_groups():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    (row,) = summarize(nn.Sequential(conv), (4, 5, 5)).rows
    assert row.macs == 6 * 5 * 5 * (4 // 2) * 3 * 3


def test_linear_macs_count_leading_dimensions():
    (row,) = summarize(nn.Sequential(nn.Linear(3, 4)), (2, 5, 3)).rows
    assert row.output_shape == (2, 5, 4)
    assert row.macs == 2 * 5 * 3 * 4


def test_summary_restores_training_mode_and_leaves_no_hooks():
    model = create_model("alexnet-cifar").train()
    summarize(model, (3, 32, 32))
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()
    summarize(model, (3, 32, 32))
    assert not model.training


def test_format_summary_is_a_plain_table_with_separated_totals():
    summary = summarize(create_model("alexnet", num_classes=1000), (3, 227, 227))
    text = format_summary(summary, "AlexNet (2012)")
    assert text.splitlines()[0] == "AlexNet (2012)"
    assert "Layer (type)" in text and "Output shape" in text and "Param #" in text and "MACs" in text
    assert "features.conv1 (Conv2d)" in text
    assert "105,415,200" in text
    assert "Total params: 62,378,344" in text
    assert "Trainable params: 62,378,344" in text
    assert f"MACs per image: {human_count(summary.macs)}" in text


def test_human_count_uses_one_decimal_and_a_suffix():
    assert human_count(714_200_000) == "714.2 M"
    assert human_count(1_135_256_096) == "1.1 G"
    assert human_count(6_807) == "6.8 K"
    assert human_count(12) == "12"


def test_summary_runs_without_gradients():
    model = create_model("alexnet-cifar", hidden=32)
    summarize(model, (3, 32, 32))
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()
