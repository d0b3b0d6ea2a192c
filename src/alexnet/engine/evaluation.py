"""Run a model over batches and collect its outputs: shared by validation, `evaluate` and `report`."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast


@torch.no_grad()
def collect_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device, amp: str = "auto", tta: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 (N, C), labels (N,)) on the CPU; with `tta` the mirror image's logits are averaged in."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for x, y in batches:
            with autocast(device, amp):
                if x.ndim == 5:  # (B, views, C, H, W): the paper's ten crops, logits averaged over views
                    logits = model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1).mean(1)
                else:
                    logits = model(x)
                if tta and x.ndim == 4:
                    # Flip test-time augmentation: a mirrored scene is the same class.
                    logits = 0.5 * (logits + model(x.flip(3)))
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
