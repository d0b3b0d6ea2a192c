"""Test-time augmentation: which views the model sees and how their logits are weighted."""

import torch
from torch import nn

from alexnet.engine.evaluation import collect_logits


class Recorder(nn.Module):
    """Remembers every input; its logit is the mean of the top-left 2x2 pixels (so views differ)."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x[:, :1, :2, :2].mean((1, 2, 3)).unsqueeze(1)


def run(x, views=1, **tta):
    """The views the model saw (all in one forward pass, stacked along the batch axis) and the logits."""
    model = Recorder()
    logits, labels = collect_logits(model, [(x, torch.zeros(len(x), dtype=torch.long))], torch.device("cpu"),
                                    "off", **tta)
    assert len(model.seen) == 1 and len(model.seen[0]) == views * len(x)
    return list(model.seen[0].chunk(views)), logits


def test_flip_tta_averages_the_image_and_its_mirror():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    seen, logits = run(x, views=2, tta=True)
    assert torch.equal(seen[0], x) and torch.equal(seen[1], x.flip(3))
    torch.testing.assert_close(logits[:, 0], 0.5 * (x[:, 0, :2, :2].mean((1, 2)) + x.flip(3)[:, 0, :2, :2].mean((1, 2))))


def test_shift_tta_adds_translated_copies_with_half_the_weight():
    x = torch.randn(2, 3, 8, 8)
    seen, logits = run(x, views=6, tta=True, tta_shift=1)
    down_right, up_left = seen[2], seen[4]  # content moved by +1 and -1 pixel on both axes
    torch.testing.assert_close(down_right[..., 1:, 1:], x[..., :-1, :-1])
    torch.testing.assert_close(up_left[..., :-1, :-1], x[..., 1:, 1:])
    per_view = [v[:, 0, :2, :2].mean((1, 2)) for v in seen]
    expected = 0.25 * (per_view[0] + per_view[1]) + 0.125 * sum(per_view[2:])
    torch.testing.assert_close(logits[:, 0], expected)


def test_no_tta_is_one_pass():
    x = torch.randn(1, 3, 8, 8)
    seen, _ = run(x, views=1, tta=False, tta_shift=2)
    assert torch.equal(seen[0], x)
