"""Optimiser and learning-rate schedule: SGD with Nesterov momentum, warm-up then decay per step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import MUON_NEEDS_BATCH_NORM, TrainConfig
from ..errors import AlexnetError
from .budget import TimeBudget
from .finetune import split_rates


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch norms with a learned scale and bias."""
    return [m for m in batch_norms(model) if m.affine]


@torch.no_grad()
def freeze_norm_scales(model: nn.Module) -> None:
    """airbench's batch norm: every scale fixed at 1, only the bias learns (the next conv carries the scale)."""
    for module in norm_layers(model):
        module.weight.fill_(1.0)
        module.weight.requires_grad_(False)


def parameter_groups(model: nn.Module, weight_decay: float, bn_bias_lr: float = 1.0) -> list[dict]:
    """Decay conv/linear weights only: decaying biases and norm scales only fights batch norm.

    bn_bias_lr != 1 (airbench: 64) puts batch-norm biases in a group of their own whose learning rate is
    multiplied by it ("lr_scale") and whose weight decay is divided by it, so that each step shrinks them
    by the same fraction as the weights (lr x decay); at 1 they stay undecayed with the other biases.
    """
    norm_biases = [m.bias for m in norm_layers(model) if m.bias.requires_grad] if bn_bias_lr != 1.0 else []
    special = {id(p) for p in norm_biases}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in special:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": norm_biases, "weight_decay": weight_decay / bn_bias_lr, "lr_scale": bn_bias_lr}]
    return [g for g in groups if g["params"]]


def preload_compiler_hooks() -> None:
    """Import what torch.optim imports when it builds its first optimizer (torch._dynamo, for the hooks it
    puts around `step`: 1.2 s on the 2-core box). `alexnet train` calls it early, while a child decodes a
    cold dataset, so the import overlaps with work on the other core instead of following it."""
    import torch._dynamo  # noqa: F401  lazy: importing it when the caller chooses is this function's job


def orthogonalise(g: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Approximately U V^T of the SVD of a matrix (or of each matrix of a batch, the last two dims): every
    singular value moved towards 1 by a quintic Newton-Schulz iteration (Muon's; its coefficients trade
    exactness for speed: after three steps singular values above ~1/50 of the matrix's Frobenius norm land
    roughly in [0.7, 1.2], smaller ones are raised less, which is all the step needs).

    Each iteration maps X to p(X X^T) X for a polynomial p, so the result is P X with P a polynomial in
    Y = X X^T, the Gram matrix on the shorter side: the iteration runs on Y (all these matrices commute)
    and X is multiplied once at the end: 2 products with X and 9 on Y for 3 steps, where iterating on X
    itself takes 6 with X and 3 on Y. For conv5's 192 x 1728 filters that is less than half the work,
    with the same result to ~1e-6."""
    if steps < 1:
        raise ValueError(f"orthogonalise needs steps >= 1, got {steps}")
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    y = x @ x.mT  # X_k X_k^T, where X_k = P X
    eye = torch.eye(y.size(-1), dtype=y.dtype, device=y.device)
    poly = None
    for k in range(steps):
        y2 = y @ y
        step = a * eye + b * y + c * y2  # p(Y): X_{k+1} = p(Y) X_k
        poly = step if poly is None else step @ poly
        if k + 1 < steps:
            y = step @ (a * y + b * y2 + c * (y2 @ y))  # p(Y) Y p(Y) = p(Y) (p(Y) Y)
    x = poly @ x
    return x.mT if tall else x


class MuonSGD(torch.optim.Optimizer):
    """SGD with (Nesterov) momentum, except in groups marked `muon`, which take Muon's steps
    (Jordan et al. 2024, as airbench94_muon uses it on conv filters): the momentum of the gradient,
    reshaped to (out, in*kh*kw), orthogonalised, then added at the group's rate to a filter tensor first
    rescaled to norm sqrt(out). Batch norm after each such conv makes the scale irrelevant to the
    function; fixing it keeps the effective step size set by the rate alone, so those groups take no
    weight decay. The other groups behave exactly as torch.optim.SGD.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool, ns_steps: int = 3):
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0, muon=False,
                                      ns_steps=ns_steps, conv_groups=1))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] and not group["muon"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if momentum:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(momentum).add_(g)
                    g = g.add(buf, alpha=momentum) if nesterov else buf
                if group["muon"]:
                    p.mul_(p.size(0) ** 0.5 / (p.norm() + 1e-12))
                    towers = group["conv_groups"]  # a grouped conv's towers see different inputs: one matrix each
                    g = orthogonalise(g.reshape(towers, p.size(0) // towers, -1), group["ns_steps"]).reshape(p.shape)
                p.add_(g, alpha=-lr)
        return loss


def muon_groups(model: nn.Module, groups: list[dict], cfg: TrainConfig) -> list[dict]:
    """Move every conv filter but the first (the stem, often whitened: a 3-channel input's few weights) out
    of the SGD groups into Muon groups, one per conv `groups` value (a two-tower conv's towers are
    orthogonalised apart). Each such conv must feed a batch norm, which makes its scale free."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(batch_norms(model)) < len(convs):  # an affine-free batch norm fixes the scale as well
        raise AlexnetError(MUON_NEEDS_BATCH_NORM)  # validate() checks the built-in models before any data is read
    towers: dict[int, list[nn.Parameter]] = {}
    for conv in convs[1:]:
        if conv.weight.requires_grad:
            towers.setdefault(conv.groups, []).append(conv.weight)
    taken = {id(p) for params in towers.values() for p in params}
    rest = [dict(g, params=[p for p in g["params"] if id(p) not in taken]) for g in groups]
    return [g for g in rest if g["params"]] + [
        {"params": params, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "nesterov": True,
         "weight_decay": 0.0, "muon": True, "conv_groups": count} for count, params in sorted(towers.items())]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr_scales: dict[int, float] | None = None
                    ) -> torch.optim.Optimizer:
    """lr_scales: rate multipliers by parameter id (--lr-backbone's pretrained layers, engine/finetune.py)."""
    if not cfg.bn_scale:
        freeze_norm_scales(model)
    groups = parameter_groups(model, cfg.weight_decay, cfg.bn_bias_lr)
    for group in groups:
        group["lr"] = cfg.lr * group.pop("lr_scale", 1.0)
    nesterov = cfg.nesterov and cfg.momentum > 0
    if cfg.optimizer == "muon":
        return MuonSGD(split_rates(muon_groups(model, groups, cfg), lr_scales), lr=cfg.lr, momentum=cfg.momentum,
                       nesterov=nesterov)
    return torch.optim.SGD(split_rates(groups, lr_scales), lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)


# Under a time limit the warm-up ends, at the latest, when this share of the training time is spent: on
# a machine slow enough that its steps would fill most of the budget, the decay still gets the rest.
WARMUP_MAX_SHARE = 0.5


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, time_fraction: float = 0.0,
              peak: float = 1.0) -> float:
    """Multiplier of the peak rate at `step`: linear warm-up from ~0, then linear or cosine decay to 0.

    time_fraction: with a time limit, the share of the post-warm-up time already spent; the decay follows
    whichever of steps and time is further along, so it reaches 0 when either runs out. peak: where the
    decay starts (below 1 when the clock cut the warm-up short)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(max(progress, time_fraction), 1.0)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


class Schedule:
    """The learning-rate schedule: per-step warm-up + decay, or the paper's divide-by-10 on a plateau."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                 budget: TimeBudget | None = None):
        self.plateau = cfg.schedule == "plateau"
        self.budget = budget if budget is not None and budget.enabled else None
        if self.plateau:
            # The 2012 paper: divide the rate by 10 when the validation error stops improving.
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.1, patience=cfg.plateau_patience)
        else:
            total = cfg.epochs * steps_per_epoch
            self.warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
            self.peak = 1.0
            self.inner = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_factor(step, total, self.warmup, cfg.schedule, self.time_fraction(),
                                                  self.peak))

    def time_fraction(self) -> float:
        return self.budget.decay_fraction() if self.budget is not None else 0.0

    def step(self) -> None:
        """After every optimiser step."""
        if self.plateau:
            return
        step = self.inner.last_epoch + 1
        if self.budget is not None and self.budget.decay_started is None:
            if step < self.warmup and self.budget.run_fraction() >= WARMUP_MAX_SHARE:
                self.peak = max(step, 1) / self.warmup  # decay from the rate reached
                self.warmup = step
            if step >= self.warmup:
                self.budget.decay_started = self.budget.now()  # the clock-driven decay starts when the warm-up ends
        self.inner.step()

    def epoch_end(self, val_acc: float) -> None:
        if self.plateau and val_acc == val_acc:  # NaN (no validation split) never counts as a plateau
            self.inner.step(val_acc)

    def state_dict(self) -> dict:
        state = self.inner.state_dict()
        if not self.plateau:
            state["warmup_and_peak"] = (self.warmup, self.peak)  # a warm-up the clock cut short stays cut
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        cut = state.pop("warmup_and_peak", None)
        if cut is not None and not self.plateau:
            self.warmup, self.peak = int(cut[0]), float(cut[1])
        self.inner.load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    budget: TimeBudget | None = None) -> Schedule:
    return Schedule(optimizer, cfg, steps_per_epoch, budget)
