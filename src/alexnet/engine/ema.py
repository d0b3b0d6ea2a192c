"""Exponential moving average of the weights: evaluates like an ensemble of the last few hundred steps."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A shadow copy of `model` whose parameters trail it: shadow = decay*shadow + (1-decay)*param."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p for p in self.shadow.parameters()]
        torch._foreach_lerp_(params, [p.detach() for p in model.parameters()], 1 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):  # batch-norm statistics: copied as they are
            s.copy_(b)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
