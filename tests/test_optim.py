import pytest
import torch

from alexnet.config import TrainConfig
from alexnet.engine.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_rises_linearly_then_decays_to_zero():
    factors = [lr_factor(s, 100, 10, "linear") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)


def test_weight_decay_skips_biases_and_norm_scales():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = build_optimizer(model, TrainConfig(weight_decay=1e-3)).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 1e-3 and groups[1]["weight_decay"] == 0


def test_plateau_schedule_divides_by_ten_when_validation_stops_improving():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.01, schedule="plateau", plateau_patience=1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    for acc in [0.5, 0.6, 0.6, 0.6]:
        for _ in range(5):
            sched.step()
        sched.epoch_end(acc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_frozen_norm_scales_stay_at_one_and_norm_biases_get_the_scaled_rate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))
    with torch.no_grad():
        model[1].weight.fill_(0.5)
    cfg = TrainConfig(lr=0.1, weight_decay=1e-3, bn_scale=False, bn_bias_lr=64.0)
    opt = build_optimizer(model, cfg)
    assert torch.equal(model[1].weight, torch.ones(4)) and not model[1].weight.requires_grad
    by_lr = {g["lr"]: g for g in opt.param_groups}
    assert set(by_lr) == {0.1, 6.4}
    assert by_lr[6.4]["params"] == [model[1].bias] and by_lr[6.4]["weight_decay"] == pytest.approx(1e-3 / 64)
    assert all(p is not model[1].weight for g in opt.param_groups for p in g["params"])
    loss = model(torch.randn(8, 3, 6, 6)).square().mean()
    loss.backward()
    grad = model[1].bias.grad.clone()
    opt.step()
    # first Nesterov SGD step: -lr * (1 + momentum) * grad for an undecayed-at-zero bias
    assert torch.allclose(model[1].bias, -6.4 * 1.9 * grad, atol=1e-6)
    assert torch.equal(model[1].weight, torch.ones(4))
