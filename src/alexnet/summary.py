"""Keras-style model summary: per-layer output shapes, parameter counts and multiply-accumulates.

Only convolutions and linear layers are counted as MACs (as most tools do): they are almost
all of the arithmetic, and norm, activation, pooling and dropout layers count 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class LayerRow:
    """One leaf module as it ran: dotted name, class name, output shape without the batch axis."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class Summary:
    """Rows in execution order plus whole-model totals (MACs are per image)."""

    rows: list[LayerRow] = field(default_factory=list)
    params: int = 0
    trainable_params: int = 0
    macs: int = 0


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    per_image = output[0].numel()  # the summary runs one image, so drop the batch axis
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features  # = leading dims * in_features * out_features
    return 0


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in output if isinstance(t, torch.Tensor)), None)
    return None


def summarize(model: nn.Module, input_size: tuple[int, int, int]) -> Summary:
    """Run one image of shape `input_size` (C, H, W) through `model` and record every leaf module.

    The pass runs in eval mode under `torch.no_grad()` on the model's device; the model's
    training mode is restored afterwards. A module called twice gives two rows.
    """
    rows: list[LayerRow] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, tuple(tensor.shape[1:]), params, _macs(module, tensor)))

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record(name)) for name, m in leaves]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    return Summary(
        rows=rows,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(r.macs for r in rows),
    )


def human_count(n: float) -> str:
    """A count with one decimal and a K/M/G/T suffix, e.g. 714_200_000 -> '714.2 M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:.0f}"


def format_summary(summary: Summary, title: str) -> str:
    """A plain-text table of `summary` (layer, output shape, params, MACs) with a totals footer."""
    header = ("Layer (type)", "Output shape", "Param #", "MACs")
    body = [
        (f"{r.name} ({r.type})", "(" + ", ".join(map(str, r.output_shape)) + ")", f"{r.params:,}", f"{r.macs:,}")
        for r in summary.rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        # Names and shapes read left to right; numbers line up on the right.
        return "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule_width = sum(widths) + 2 * (len(widths) - 1)
    non_trainable = summary.params - summary.trainable_params
    out = [
        title,
        "=" * rule_width,
        line(header),
        "=" * rule_width,
        *(line(cells) for cells in body),
        "=" * rule_width,
        f"Total params: {summary.params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Non-trainable params: {non_trainable:,}",
        f"MACs per image: {human_count(summary.macs)} ({summary.macs:,})",
        "-" * rule_width,
    ]
    return "\n".join(out)
