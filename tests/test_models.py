"""Specification of the model registry and the two AlexNet variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet.errors import AlexnetError
from alexnet.models import create_model, default_image_size, list_models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


# --- registry ---------------------------------------------------------------------------


def test_every_model_is_registered_with_its_native_image_size():
    assert list_models() == ["alexnet", "alexnet-cifar", "alexnet-torchvision"]
    assert default_image_size("alexnet") == 227
    assert default_image_size("alexnet-cifar") == 32
    assert default_image_size("alexnet-torchvision") == 224


def test_image_size_none_means_the_models_default():
    assert create_model("alexnet-cifar").image_size == 32
    assert create_model("alexnet-cifar", image_size=None).image_size == 32


def test_unknown_model_raises_alexnet_error_listing_known_names():
    with pytest.raises(AlexnetError, match="alexnet, alexnet-cifar") as info:
        create_model("resnet50")
    assert "\n" not in str(info.value)
    with pytest.raises(AlexnetError):
        default_image_size("resnet50")


def test_option_the_model_does_not_have_raises_alexnet_error():
    with pytest.raises(AlexnetError, match="groups"):
        create_model("alexnet-cifar", groups=2)


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("alexnet", {"norm": "foo"}, "norm"),
        ("alexnet", {"groups": 3}, "groups"),
        ("alexnet", {"init": "xavier"}, "init"),
        ("alexnet", {"dropout": 1.0}, "dropout"),
        ("alexnet", {"image_size": 64}, "image_size"),
        ("alexnet-cifar", {"norm": "lrn"}, "norm"),
        ("alexnet-cifar", {"widths": (64, 128)}, "widths"),
        ("alexnet-cifar", {"hidden": -1}, "hidden"),
        ("alexnet-cifar", {"pool_first": "yes"}, "pool_first"),
        ("alexnet-cifar", {"global_pool": 1}, "global_pool"),
        ("alexnet-cifar", {"pools": (1, 6)}, "pools"),
        ("alexnet-cifar", {"pools": (2, 2)}, "pools"),
        ("alexnet-cifar", {"pool_size": 4}, "pool_size"),
        ("alexnet-cifar", {"pool_size": True}, "pool_size"),
        ("alexnet-cifar", {"init": "paper"}, "init"),
        ("alexnet-cifar", {"conv1_kernel": 5}, "conv1_kernel"),
        ("alexnet-cifar", {"conv1_kernel": True}, "conv1_kernel"),
        ("alexnet-cifar", {"conv1_kernel": 2, "pools": (1, 2, 3), "image_size": 8}, "image_size"),
        ("alexnet-cifar", {"pools": (1, 2, 3, 4, 5), "image_size": 16}, "image_size"),
        ("alexnet-cifar", {"dropout": -0.1}, "dropout"),
        ("alexnet-cifar", {"image_size": 4}, "image_size"),
        ("alexnet-cifar", {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_option_value_raises_one_line_alexnet_error_naming_the_option(name, options, named):
    with pytest.raises(AlexnetError, match=named) as info:
        create_model(name, **options)
    assert "\n" not in str(info.value)


# --- the paper network ------------------------------------------------------------------


def test_paper_alexnet_has_62_378_344_parameters():
    assert n_params(create_model("alexnet", num_classes=1000)) == 62_378_344
    assert n_params(create_model("alexnet", num_classes=1000, norm="none")) == 62_378_344


def test_two_tower_alexnet_has_60_965_224_parameters():
    assert n_params(create_model("alexnet", num_classes=1000, groups=2)) == 60_965_224


def test_two_towers_group_conv2_conv4_conv5_but_conv3_sees_both_towers():
    model = create_model("alexnet", groups=2)
    groups = {name: layer(model, f"features.{name}").groups for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}


def test_batchnorm_adds_only_its_affine_parameters():
    bn_affine = 2 * (96 + 256 + 384 + 384 + 256)
    assert n_params(create_model("alexnet", num_classes=1000, norm="batchnorm")) == 62_378_344 + bn_affine


def test_alexnet_at_227_gives_256x6x6_features_and_logits_for_a_batch_of_2():
    model = create_model("alexnet", num_classes=1000).eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert model.features(x).shape == (2, 256, 6, 6)
        assert model(x).shape == (2, 1000)


def test_alexnet_sizes_its_first_fc_from_the_actual_feature_map():
    # 67 px is the smallest input that survives conv1 and three 3/2 pools: a 1x1 map.
    model = create_model("alexnet", image_size=67).eval()
    assert layer(model, "classifier.fc6").in_features == 256
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 67)).shape == (1, 10)


def test_first_conv_found_by_modules_is_conv1():
    conv = next(m for m in create_model("alexnet").modules() if isinstance(m, nn.Conv2d))
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (3, 96, (11, 11), (4, 4))


def test_lrn_variant_normalises_after_conv1_and_conv2():
    model = create_model("alexnet")
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_batchnorm_variant_has_batchnorm_and_no_local_response_norm():
    model = create_model("alexnet", norm="batchnorm")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())


def test_norm_none_has_neither_normalisation():
    model = create_model("alexnet", norm="none")
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LocalResponseNorm)) for m in model.modules())


def test_lrn_matches_the_papers_formula_with_alpha_1e_minus_4_on_the_plain_sum():
    lrn = next(m for m in create_model("alexnet").modules() if isinstance(m, nn.LocalResponseNorm))
    torch.manual_seed(0)
    a = 30 * torch.randn(1, 7, 2, 2, dtype=torch.float64)  # large enough for the sum to matter
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75  # Sec. 3.3
    expected = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        window = a[:, max(0, i - n // 2) : min(channels, i + n // 2 + 1)]
        expected[:, i] = a[:, i] / (k + alpha * (window**2).sum(dim=1)) ** beta
    torch.testing.assert_close(lrn(a), expected)


def test_paper_init_sets_biases_to_1_in_conv2_conv4_conv5_fc6_fc7_and_0_elsewhere():
    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=1000, init="paper")
    ones = {"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"}
    zeros = {"features.conv1", "features.conv3", "classifier.fc8"}
    for name in ones:
        assert torch.all(layer(model, name).bias == 1), name
    for name in zeros:
        assert torch.all(layer(model, name).bias == 0), name


def test_paper_init_draws_weights_with_std_0_01():
    torch.manual_seed(0)
    model = create_model("alexnet", init="paper", groups=2)
    for name in ("features.conv1", "features.conv3", "classifier.fc7"):
        weight = layer(model, name).weight
        assert weight.std().item() == pytest.approx(0.01, rel=0.03), name
        assert weight.mean().item() == pytest.approx(0.0, abs=1e-3), name


def test_dropout_zero_leaves_out_dropout_layers():
    assert any(isinstance(m, nn.Dropout) for m in create_model("alexnet").modules())
    assert not any(isinstance(m, nn.Dropout) for m in create_model("alexnet", dropout=0.0).modules())
    assert layer(create_model("alexnet", dropout=0.3), "classifier.drop6").p == 0.3


# --- the CIFAR network ------------------------------------------------------------------


def test_cifar_alexnet_gives_logits_for_a_batch_of_2_at_32px():
    model = create_model("alexnet-cifar").eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert model.features(x).shape == (2, 256, 4, 4)
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("size", [16, 24, 40, 64])
def test_cifar_alexnet_works_at_any_multiple_of_8_from_16(size):
    model = create_model("alexnet-cifar", image_size=size, num_classes=100).eval()
    assert layer(model, "classifier.fc6").in_features == 256 * (size // 8) ** 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 100)


def test_cifar_alexnet_default_layout():
    model = create_model("alexnet-cifar")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert layer(model, "classifier.fc7").in_features == 1024
    assert layer(model, "classifier.fc8").out_features == 10


def test_cifar_alexnet_options():
    model = create_model("alexnet-cifar", widths=[8, 8, 16, 16, 32], hidden=64, dropout=0, norm="none")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32]
    assert all(c.bias is not None for c in convs)  # no BatchNorm to absorb the bias
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in model.modules())
    assert layer(model, "classifier.fc6").out_features == 64
    assert layer(model, "classifier.fc6").in_features == 32 * 4 * 4


def test_pool_first_computes_the_same_function_with_positive_bn_scales():
    # max-pool commutes with a per-channel increasing map (BN with scale > 0, then ReLU): same weights,
    # same outputs, fewer pixels through BN and ReLU.
    torch.manual_seed(0)
    kw = dict(num_classes=10, image_size=32, widths=(8, 8, 16, 16, 16), hidden=32)
    late, early = create_model("alexnet-cifar", **kw), create_model("alexnet-cifar", pool_first=True, **kw)
    for m in late.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    early.load_state_dict(late.state_dict())  # same parameter names in both orders
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(early.eval()(x), late.eval()(x))
    names = [n for n, _ in early.features.named_children()]
    assert names.index("pool1") < names.index("bn1") and "pool3" not in names


def test_hidden_zero_is_a_single_fully_connected_layer():
    model = create_model("alexnet-cifar", num_classes=7, image_size=32, widths=(8, 8, 16, 16, 16), hidden=0)
    linears = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16 * 4 * 4, 7)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_pools_choose_which_convolutions_halve_the_map_and_global_pool_leaves_one_value_per_channel():
    kw = dict(num_classes=10, image_size=32, widths=(8, 8, 16, 16, 24), hidden=0, dropout=0.0)
    model = create_model("alexnet-cifar", pools=(2, 3, 4), **kw)
    names = [n for n, _ in model.features.named_children()]
    assert [n for n in names if n.startswith("pool")] == ["pool2", "pool3", "pool4"]
    assert layer(model, "classifier.fc8").in_features == 24 * 4 * 4  # 32 / 2**3
    pooled = create_model("alexnet-cifar", pools=(2, 3, 4), global_pool=True, **kw)
    assert layer(pooled, "classifier.fc8").in_features == 24
    x = torch.randn(2, 3, 32, 32)
    pooled.load_state_dict(model.state_dict() | {k: v for k, v in pooled.state_dict().items() if "fc8" in k})
    pooled.eval(), model.eval()
    # the global max equals the max over conv5's 4x4 map
    conv5_map = model.features(x)
    assert torch.equal(pooled.features(x).flatten(1), conv5_map.amax(dim=(2, 3)))
    assert pooled(x).shape == (2, 10)


@pytest.mark.parametrize("image_size", [32, 36, 40])
def test_overlapping_pools_halve_the_map_as_2x2_pools_do_and_see_the_neighbouring_row(image_size):
    kw = dict(num_classes=10, image_size=image_size, widths=(8, 8, 16, 16, 24), hidden=0, dropout=0.0,
              pools=(1, 2, 3))
    model = create_model("alexnet-cifar", pool_size=3, **kw)
    pool = layer(model, "features.pool1")
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    x = torch.randn(2, 3, image_size, image_size)
    side = model.features(x).shape[-1]
    assert layer(model, "classifier.fc8").in_features == 24 * side * side and model(x).shape == (2, 10)
    # A lone peak on an odd row and column reaches two outputs in each direction (windows overlap),
    # where a 2x2 pool passes it to one.
    peak = torch.zeros(1, 1, 8, 8)
    peak[0, 0, 3, 3] = 1.0
    assert int(pool(peak).sum()) == 4 and int(torch.nn.MaxPool2d(2)(peak).sum()) == 1


def test_a_2x2_stem_trims_one_pixel_and_the_pools_floor_the_odd_sides():
    # airbench's stem: 2x2, unpadded, so 32 -> 31, and three 2x2 pools leave 15, 7 and 3.
    kw = dict(num_classes=10, image_size=32, widths=(24, 8, 16, 16, 32), hidden=0, dropout=0.0, pools=(2, 3, 4))
    model = create_model("alexnet-cifar", conv1_kernel=2, **kw)
    conv1 = layer(model, "features.conv1")
    assert conv1.kernel_size == (2, 2) and conv1.padding == (0, 0)
    assert layer(model, "features.conv2").kernel_size == (3, 3)
    x = torch.randn(2, 3, 32, 32)
    assert model.features(x).shape == (2, 32, 3, 3)
    assert layer(model, "classifier.fc8").in_features == 32 * 3 * 3 and model(x).shape == (2, 10)
    pooled = create_model("alexnet-cifar", conv1_kernel=2, global_pool=True, **kw)
    assert layer(pooled, "classifier.fc8").in_features == 32 and pooled(x).shape == (2, 10)


def test_dirac_init_makes_each_conv_pass_its_first_input_channels_through():
    kw = dict(num_classes=10, image_size=32, widths=(8, 8, 16, 16, 16), hidden=0)
    model = create_model("alexnet-cifar", init="dirac", **kw)
    for name, c_in, c_out in [("conv2", 8, 8), ("conv3", 8, 16), ("conv4", 16, 16)]:
        x = torch.randn(2, c_in, 8, 8)
        with torch.no_grad():
            y = layer(model, f"features.{name}")(x)
        kept = min(c_in, c_out)
        assert torch.allclose(y[:, :kept], x[:, :kept], atol=1e-6), name
        if c_out > kept:  # the filters beyond the identity keep torch's random init
            assert y[:, kept:].abs().max() > 1e-3, name
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(layer(create_model("alexnet-cifar", **kw), "features.conv2")(x), x, atol=1e-3)


@pytest.mark.parametrize("preset", ["cifar10-fast", "cifar10", "cifar10-best"])
def test_cifar_presets_train_an_alexnet_family_network(preset):
    # The rule the CIFAR recipes keep: five convolutions, then fully connected layers; ReLU, max pooling,
    # batch norm allowed; nothing that adds a layer's input to its output. A preset that drifted from it would
    # still train, so check the network the preset actually builds.
    from alexnet.config import preset_config

    cfg = preset_config(preset)
    model = create_model(cfg.model.name, num_classes=10, image_size=32, **cfg.model.options())
    kinds = {type(m) for m in model.modules() if not list(m.children())}
    assert kinds <= {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                     nn.Dropout, nn.Linear}
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and not any(isinstance(m, nn.Linear) for m in model.features.modules())
    assert [c.out_channels for c in convs] == list(cfg.model.widths)
    # a plain stack: the output is a function of the last conv's map alone (no path around it)
    assert isinstance(model.features, nn.Sequential) and isinstance(model.classifier, nn.Sequential)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
