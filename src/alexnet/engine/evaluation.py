"""Run a model over batches and collect its outputs: shared by validation, `evaluate` and `report`."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast


def stacked_views(x: torch.Tensor, tta: bool, tta_shift: int) -> tuple[torch.Tensor, list[float]]:
    """A batch's test-time views stacked along the batch axis, and each view's weight in the average.

    Flips: a mirrored scene is the same class, so the image and its mirror weigh half each. With a shift: half
    the weight on the image (and mirror) as it is, half on the two copies moved by `tta_shift` pixels diagonally
    either way (reflect-padded, as the training crops): 6 views."""
    if not tta:
        return x, [1.0]
    views = [x, x.flip(3)]
    if tta_shift <= 0:
        return torch.cat(views), [0.5, 0.5]
    side_h, side_w = x.shape[-2:]
    padded = F.pad(x, (tta_shift,) * 4, mode="reflect")
    for moved in (padded[..., :side_h, :side_w], padded[..., 2 * tta_shift:, 2 * tta_shift:]):
        views += [moved, moved.flip(3)]
    return torch.cat(views), [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


def view_logits(model: nn.Module, x: torch.Tensor, tta: bool, tta_shift: int) -> torch.Tensor:
    """The logits of a batch averaged over the run's test-time views, in one forward pass over all of them: one
    batch of 6N runs faster than six of N (onnxruntime, `cifar10`'s network, batch 32: 1.25x the images/s)."""
    views, weights = stacked_views(x, tta, tta_shift)
    logits = model(views).float().view(len(weights), x.shape[0], -1)
    return (logits * torch.tensor(weights, device=logits.device).view(-1, 1, 1)).sum(0)


@torch.no_grad()
def collect_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device, amp: str = "auto", tta: bool = False, tta_shift: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 (N, C), labels (N,)) on the CPU; with `tta` the mirror image's logits are averaged in,
    with `tta_shift` > 0 also those of copies translated by that many pixels (see `stacked_views`)."""
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
