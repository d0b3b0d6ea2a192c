"""Run a model over batches and collect its outputs: shared by validation, `evaluate` and `report`."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast


def flip_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: a mirrored scene is the same class, so average both views."""
    return 0.5 * (model(x) + model(x.flip(3)))


def shift_logits(model: nn.Module, x: torch.Tensor, shift: int) -> torch.Tensor:
    """Flips and translations: half the weight on the image (and mirror) as it is, half on the two copies
    moved by `shift` pixels diagonally either way (reflect-padded, as the training crops): 6 passes."""
    side_h, side_w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    moved = [padded[..., :side_h, :side_w], padded[..., 2 * shift:, 2 * shift:]]
    return 0.5 * flip_logits(model, x) + 0.25 * (flip_logits(model, moved[0]) + flip_logits(model, moved[1]))


def view_logits(model: nn.Module, x: torch.Tensor, tta: bool, tta_shift: int) -> torch.Tensor:
    """The logits of a batch under the run's test-time views: one pass, flips, or flips and shifts."""
    if tta and tta_shift > 0:
        return shift_logits(model, x, tta_shift)
    return flip_logits(model, x) if tta else model(x)


def tta_views(tta: bool, tta_shift: int) -> int:
    """Forward passes per image that `collect_logits` makes: 1, 2 with flips, 6 with flips and shifts."""
    return (6 if tta_shift > 0 else 2) if tta else 1


@torch.no_grad()
def collect_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device, amp: str = "auto", tta: bool = False, tta_shift: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 (N, C), labels (N,)) on the CPU; with `tta` the mirror image's logits are averaged in,
    with `tta_shift` > 0 also those of copies translated by that many pixels (see `shift_logits`)."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for x, y in batches:
            with autocast(device, amp):
                if x.ndim == 5:  # (B, views, C, H, W): the paper's ten crops, logits averaged over views
                    logits = model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1).mean(1)
                else:
                    logits = view_logits(model, x, tta, tta_shift)
            all_logits.append(logits.float().cpu())
            all_labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Plain cross-entropy (no smoothing, so runs with different smoothing compare) and top-1 accuracy."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


def softmax_numpy(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).numpy()
