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


def test_muon_sgd_groups_match_torch_sgd_exactly():
    from alexnet.engine.optim import MuonSGD

    torch.manual_seed(0)
    ours = torch.nn.Linear(4, 5)
    ref = torch.nn.Linear(4, 5)
    ref.load_state_dict(ours.state_dict())

    def groups(m):
        return [{"params": [m.weight], "weight_decay": 1e-2}, {"params": [m.bias], "weight_decay": 0.0}]

    opts = [MuonSGD(groups(ours), lr=0.1, momentum=0.9, nesterov=True),
            torch.optim.SGD(groups(ref), lr=0.1, momentum=0.9, nesterov=True)]
    for _ in range(4):
        x = torch.randn(3, 4)
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)


def test_orthogonalise_moves_every_singular_value_near_one():
    from alexnet.engine.optim import orthogonalise

    torch.manual_seed(0)
    for shape in [(48, 216), (216, 48)]:
        g = torch.randn(*shape) * torch.logspace(-0.5, 0.5, shape[1])  # columns scaled over a factor of 10
        assert torch.linalg.svdvals(g).min() / g.norm() > 1 / 50  # within the range the docstring promises
        values = torch.linalg.svdvals(orthogonalise(g))  # the 3 steps Muon takes
        assert values.min() > 0.6 and values.max() < 1.3, shape
        assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3  # it did equalise them


def test_muon_steps_conv_filters_after_the_first_at_fixed_norm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 2 * 2, 3))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=0.1, muon_lr=0.05, weight_decay=1e-3))
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["params"] == [model[3].weight]
    assert muon[0]["lr"] == 0.05 and muon[0]["weight_decay"] == 0
    sgd_params = [p for g in opt.param_groups if not g["muon"] for p in g["params"]]
    assert any(p is model[0].weight for p in sgd_params) and any(p is model[7].weight for p in sgd_params)
    before = model[3].weight.detach().clone()
    model(torch.randn(8, 3, 6, 6)).logsumexp(1).mean().backward()
    opt.step()
    after = model[3].weight.detach()
    assert torch.linalg.norm(after) == pytest.approx(6 ** 0.5, rel=0.1)  # rescaled to sqrt(out), then stepped
    step = after - before * 6 ** 0.5 / torch.linalg.norm(before)
    # the step is 0.05 x an orthogonalised (6 x 36) matrix, whatever the gradient's scale: singular values near 0.05
    values = torch.linalg.svdvals(step.reshape(6, -1))
    assert values.min() > 0.05 * 0.6 and values.max() < 0.05 * 1.3


def test_muon_refuses_convolutions_without_batch_norm():
    from alexnet.errors import AlexnetError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3))
    with pytest.raises(AlexnetError, match="--optimizer muon needs batch norm"):
        build_optimizer(model, TrainConfig(optimizer="muon"))


def test_muon_state_round_trips_so_a_resumed_run_continues_identically():
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                    torch.nn.Conv2d(4, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 2))
        return model, build_optimizer(model, TrainConfig(optimizer="muon", muon_lr=0.05))

    def steps(model, opt, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            opt.zero_grad()
            model(torch.randn(4, 3, 6, 6, generator=gen)).logsumexp(1).mean().backward()
            opt.step()

    straight, opt = make()
    steps(straight, opt, 2, 1)
    steps(straight, opt, 2, 2)
    first, opt1 = make()
    steps(first, opt1, 2, 1)
    resumed, opt2 = make()
    resumed.load_state_dict(first.state_dict())
    opt2.load_state_dict(opt1.state_dict())
    steps(resumed, opt2, 2, 2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_orthogonalise_on_the_gram_matrix_equals_iterating_on_the_matrix_itself():
    from alexnet.engine.optim import orthogonalise

    def direct(g, steps):  # Muon's iteration written out on X
        x = g / (g.norm() + 1e-7)
        tall = x.size(0) > x.size(1)
        x = x.T if tall else x
        for _ in range(steps):
            gram = x @ x.T
            x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
        return x.T if tall else x

    torch.manual_seed(0)
    for shape, steps in [((24, 216), 3), ((216, 24), 3), ((16, 40), 1), ((16, 40), 5)]:
        g = torch.randn(*shape, dtype=torch.float64)
        assert torch.allclose(orthogonalise(g, steps), direct(g, steps), atol=1e-10), (shape, steps)


def test_muon_orthogonalises_the_towers_of_a_grouped_conv_apart():
    from alexnet.engine.optim import orthogonalise

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
        torch.nn.Conv2d(4, 6, 3, groups=2, bias=False), torch.nn.BatchNorm2d(6),
        torch.nn.Flatten(), torch.nn.Linear(6 * 2 * 2, 3))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", muon_lr=0.05))
    (group,) = [g for g in opt.param_groups if g["muon"]]
    assert group["conv_groups"] == 2 and group["params"] == [model[2].weight]
    before = model[2].weight.detach().clone()
    model(torch.randn(8, 3, 6, 6)).logsumexp(1).mean().backward()
    grad = model[2].weight.grad.detach().clone()
    opt.step()
    # first step: the (Nesterov) momentum is a multiple of the gradient, which orthogonalise's norm removes
    towers = [orthogonalise(grad[i * 3:(i + 1) * 3].reshape(3, -1)) for i in range(2)]
    expected = before * 6 ** 0.5 / before.norm() - 0.05 * torch.cat(towers).reshape(before.shape)
    assert torch.allclose(model[2].weight, expected, atol=1e-5)
