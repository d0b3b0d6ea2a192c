import torch

from alexnet.engine.whitening import patch_whitening, whiten_first_conv
from alexnet.models import create_model


def test_whitening_filters_decorrelate_patches():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 12, 12, generator=gen)
    images = base + 0.8 * base.roll(1, dims=1)  # correlated colour channels
    values, kernels = patch_whitening(images, (2, 2), eps=0.0)
    out = torch.nn.functional.conv2d(images - images.mean(dim=(0, 2, 3), keepdim=True), kernels)
    flat = out.permute(0, 2, 3, 1).reshape(-1, kernels.shape[0])
    cov = flat.T @ flat / len(flat)
    assert torch.allclose(cov, torch.eye(len(cov)), atol=0.05)
    assert (values[:-1] >= values[1:]).all()


def test_whiten_first_conv_sets_plus_minus_pairs():
    model = create_model("alexnet-cifar", num_classes=10, widths=(32, 32, 32, 32, 32), hidden=32)
    n = whiten_first_conv(model, torch.randn(16, 3, 32, 32))
    w = next(model.parameters())
    assert n == 32 and torch.allclose(w[:16], -w[16:32])


def test_whitening_does_not_depend_on_the_chunk_size():
    images = torch.randn(50, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    whole, chunked = patch_whitening(images, (3, 3)), patch_whitening(images, (3, 3), chunk=7)
    assert torch.allclose(whole[0], chunked[0], rtol=1e-5)
    assert torch.allclose(whole[1].abs(), chunked[1].abs(), atol=1e-4)  # eigenvectors up to sign


def test_a_2x2_stem_of_24_filters_holds_every_whitening_pair_and_decorrelates_the_patches():
    # 2x2x3 patches have 12 components: 24 filters hold all of them, + and -, and none is left random.
    model = create_model("alexnet-cifar", num_classes=10, widths=(24, 8, 8, 8, 8), hidden=0, conv1_kernel=2)
    gen = torch.Generator().manual_seed(2)
    base = torch.rand(40, 3, 16, 16, generator=gen)
    images = base + 0.5 * base.roll(1, dims=1)
    assert whiten_first_conv(model, images) == 24
    w = model.features.conv1.weight.detach()
    assert torch.allclose(w[:12], -w[12:])
    out = torch.nn.functional.conv2d(images - images.mean(dim=(0, 2, 3), keepdim=True), w[:12])
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(flat.T @ flat / len(flat), torch.eye(12), atol=0.05)
