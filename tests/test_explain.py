"""`alexnet explain`: Grad-CAM, Grad-CAM++ and occlusion maps, checked against values computed independently
(closed forms, a network split by hand, brute force, predict's own numbers), mapped back onto the image file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import alexnet
from alexnet.cli import main
from alexnet.config import DataConfig, ModelConfig, RunConfig, TrainConfig, preset_config
from alexnet.data.prepare import InputSpec, prepare_image
from alexnet.engine.checkpoint import save_checkpoint
from alexnet.engine.evaluation import stacked_views
from alexnet.errors import AlexnetError
from alexnet.explanations import explain_files
from alexnet.models import create_model
from alexnet.runtime import Classifier
from alexnet.saliency import overlay
from alexnet.saliency.cam import class_activation_maps, find_layer, merge_views, view_sources
from alexnet.saliency.maps import input_box, to_image
from alexnet.saliency.occlusion import default_patch, default_stride, occlusion_maps, patch_starts

from conftest import BLOCK_TORCH, red_square_image, run_cli

# ---------------------------------------------------------------------------------------------------------------
# Grad-CAM and Grad-CAM++ in closed form: a 1x1 convolution, global average pooling and a linear layer.
# With A_k > 0 everywhere the score is y_c = sum_k W_ck mean(A_k), so dy_c/dA_kij = W_ck / HW at every pixel.


def one_by_one_net(fc: list[list[float]]) -> nn.Module:
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 2, 1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                    flatten=nn.Flatten(), fc=nn.Linear(2, 2)))
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 3, 1, 1))  # A0 = R, A1 = G
        net.conv.bias.fill_(0.5)  # with inputs in [0, 1]: A > 0, every ReLU passes
        net.fc.weight.copy_(torch.tensor(fc))
        net.fc.bias.zero_()
    return net.eval()


def activations(x: torch.Tensor) -> np.ndarray:
    return x[:, :2].double().numpy() + 0.5  # (N, 2, H, W): the conv's maps, computed without the net


def scaled(maps: np.ndarray) -> np.ndarray:
    return maps / maps.max(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("views", [(False, 0), (True, 0), (True, 2)], ids=["one view", "flips", "flips+shifts"])
def test_gradcam_of_a_1x1_conv_is_its_closed_form_over_every_test_time_view(views):
    fc = [[1.0, -0.6], [-0.4, 0.9]]  # signs mixed: ReLU(sum) cuts part of each map
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    a = activations(x)
    for c in (0, 1):
        # Grad-CAM's weights are W_ck / HW: the map is ReLU(sum_k W_ck A_k), up to a scale. A 1x1 conv's map is a
        # function of each pixel alone, so every view brought back onto the image (mirrored, shifted back) is
        # that same map: only a wrongly placed view breaks the equality.
        expected = scaled(np.maximum(fc[c][0] * a[:, 0] + fc[c][1] * a[:, 1], 0))
        got = class_activation_maps(one_by_one_net(fc), x, torch.full((3,), c), "conv", "gradcam", *views)
        assert (expected == 0).any() and np.allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_gradcam_plus_plus_of_a_1x1_conv_is_its_closed_form(tta):
    fc = [[0.5, 0.9], [1.2, -0.3]]
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    a, hw = activations(x), 100
    for c in (0, 1):
        g = np.array(fc[c]) / hw
        # alpha = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g): one per map, S_k = the map's sum (a mirror keeps it)
        s = a.sum(axis=(2, 3))  # (N, 2)
        w = hw * np.maximum(g, 0) / (2 + s * g)  # (N, 2): the positive gradients' weighted sum
        expected = scaled(np.maximum((w[:, :, None, None] * a).sum(1), 0))
        got = class_activation_maps(one_by_one_net(fc), x, torch.full((2,), c), "conv", "gradcam++", tta, 0)
        assert np.allclose(got.numpy(), expected, atol=1e-5)
        if c == 0:  # two positive maps of different sums: ++ weighs them otherwise than Grad-CAM (0.5 : 0.9)
            assert np.abs(got.numpy() - scaled(0.5 * a[:, 0] + 0.9 * a[:, 1])).max() > 1e-3


class SquaresUnderMask(nn.Module):
    """a -> mask * a^2: the gradient 2 W mask a / HW then depends on where each view puts the image's content."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.mask * a * a


def test_each_view_is_explained_on_its_own_and_moved_back_before_the_average():
    side, shift, fc = 12, 2, [[0.7, 0.4], [-0.2, 1.0]]
    gen = torch.Generator().manual_seed(5)
    x, mask = torch.rand(2, 3, side, side, generator=gen), torch.rand(side, side, generator=gen) + 0.5
    net = one_by_one_net(fc)
    net = nn.Sequential(OrderedDict(conv=net.conv, squares=SquaresUnderMask(mask), pool=net.pool,
                                    flatten=net.flatten, fc=net.fc)).eval()
    got = class_activation_maps(net, x, torch.tensor([0, 1]), "conv", "gradcam", True, shift).numpy()

    a = activations(x)  # a 1x1 conv commutes with mirroring, shifting and reflect-padding
    padded = np.pad(a, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="reflect")
    down, up = padded[..., :side, :side], padded[..., 2 * shift:, 2 * shift:]  # content moved by +2 and -2 px
    views = [a, a[..., ::-1], down, down[..., ::-1], up, up[..., ::-1]]
    weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]  # image and mirror half, the shifted copies the other half
    inner = np.arange(shift + 1, side - shift - 1)  # pixels every view shows exactly once (no reflected copy)
    i, j = np.ix_(inner, inner)
    # Where each view shows image pixel (i, j): itself, mirrored, moved down-right, moved up-left.
    places = [(i, j), (i, side - 1 - j), (i + shift, j + shift), (i + shift, side - 1 - (j + shift)),
              (i - shift, j - shift), (i - shift, side - 1 - (j - shift))]
    for n, c in enumerate((0, 1)):
        expected = np.zeros((len(inner), len(inner)))
        for view, weight, (rows, cols) in zip(views, weights, places):
            alpha = 2 * np.array(fc[c]) * (mask.numpy() * view[n]).mean(axis=(1, 2)) / side ** 2
            cam = np.maximum((alpha[:, None, None] * view[n]).sum(0), 0)
            expected += weight * cam[rows, cols]
        inside = got[n][i, j]
        assert np.allclose(inside / inside.max(), expected / expected.max(), atol=1e-5)


def test_views_brought_back_give_the_image_they_were_made_from():
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    views, weights = stacked_views(x, True, 2)
    sources, _ = view_sources(9, True, 2)
    merged = merge_views(views.view(len(weights), 2, 9, 9), sources, weights)
    assert len(weights) == 6 and torch.allclose(merged, x[:, 0])


# ---------------------------------------------------------------------------------------------------------------
# Every model family: the hooks see what a network split by hand at the layer sees.

FAMILIES = [  # the default layer: the ReLU after the last convolution (its rectified maps)
    ("alexnet", {"norm": "lrn"}, 99, "features.relu5"),
    ("alexnet-torchvision", {}, 99, "features.11"),  # in-place ReLUs after every conv
    *[("alexnet-cifar", preset_config(p).model.options(), 32, "features.relu5")
      for p in ("cifar10-fast", "cifar10", "cifar10-best")],
    ("alexnet-cifar", {"conv1_kernel": 2, "pools": (2, 3, 4), "global_pool": True, "hidden": 0}, 32,
     "features.relu5"),
    ("alexnet-cifar", {"pool_size": 3, "norm": "none", "widths": (8, 8, 16, 16, 16), "hidden": 32}, 32,
     "features.relu5"),
]


def split_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM without hooks: run the features up to the layer, then the rest of the net from a leaf tensor."""
    children = [name for name, _ in model.features.named_children()]
    i = children.index(layer.split(".", 1)[1])
    a = model.features[:i + 1](x).detach().requires_grad_(True)
    rest = model.features[i + 1:](a.clone())  # a clone: an in-place ReLU may not write into a leaf
    if hasattr(model, "avgpool"):
        rest = model.avgpool(rest).flatten(1)
    score = model.classifier(rest).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(score, a)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.amax(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize("name, options, size, default", FAMILIES,
                         ids=["alexnet", "torchvision", "cifar10-fast", "cifar10", "cifar10-best", "conv1-2x2",
                              "pool3-no-norm"])
def test_gradcam_hooks_match_a_network_split_at_the_layer(name, options, size, default):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, image_size=size, **options).eval()
    assert find_layer(model)[0] == default
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    # An untrained net may have no evidence at all for a class (an all-zero map): explain one that it has.
    per_class = [split_gradcam(model, x, torch.full((2,), c), default) for c in range(4)]
    target = torch.tensor([next(c for c in range(4) if per_class[c][i].isfinite().all()) for i in range(2)])
    expected = split_gradcam(model, x, target, default)
    got = class_activation_maps(model, x, target, None, "gradcam")
    assert got.shape == (2, size, size) and torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.amax(dim=(1, 2)), torch.ones(2))


def test_a_layer_that_is_no_layer_of_the_model_is_named_with_the_convolutions():
    model = create_model("alexnet-cifar", num_classes=3, image_size=32)
    with pytest.raises(AlexnetError, match=r"--layer 'features\.conv9' .*features\.conv1, features\.conv2, "
                                           r"features\.conv3, features\.conv4, features\.conv5$"):
        find_layer(model, "features.conv9")
    with pytest.raises(AlexnetError, match=r"--layer classifier\.fc8 gives outputs of shape \(3,\) per image, "):
        class_activation_maps(model.eval(), torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long),
                              "classifier.fc8")


def test_the_map_of_a_mirrored_image_is_the_mirrored_map():
    # Any weights will do (the symmetry comes from the views), so seeded ones rather than a training run's.
    torch.manual_seed(0)
    model = create_model("alexnet-cifar", num_classes=3, image_size=32, **preset_config("cifar10").model.options())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 1, 2])
    for method in ("gradcam", "gradcam++"):
        straight = class_activation_maps(model.eval(), x, target, None, method, tta=True)
        mirrored = class_activation_maps(model, x.flip(3), target, None, method, tta=True)
        assert (straight.amax(dim=(1, 2)) == 1).all()  # maps with something to mirror, not zero everywhere
        assert torch.allclose(mirrored, straight.flip(2), atol=1e-5)
    # Without the mirrored view the network itself is not symmetric: the equality above comes from the views.
    alone = class_activation_maps(model, x, target, None, "gradcam")
    assert not torch.allclose(class_activation_maps(model, x.flip(3), target, None, "gradcam"), alone.flip(2),
                              atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# From the model's input grid back to the file.

def coordinate_image(path: Path, width: int, height: int) -> None:
    """Red encodes x and green y (0..255 across the image): a prepared pixel tells where in the file it came from."""
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8)).save(path)


@pytest.mark.parametrize("spec, width, height", [
    (InputSpec("memory", 32, store_size=32), 45, 37), (InputSpec("memory", 32, store_size=32), 40, 64),
    (InputSpec("memory", 64, store_size=24), 70, 33), (InputSpec("stream", 32, resize=40), 64, 48),
    (InputSpec("stream", 24, resize=30), 50, 69)])
def test_the_box_is_where_predict_takes_its_pixels_from(tmp_path, spec, width, height):
    coordinate_image(tmp_path / "c.png", width, height)
    pixels = prepare_image(tmp_path / "c.png", spec).astype(np.float64)
    left, top, right, bottom = input_box(spec, width, height)
    side = pixels.shape[0]
    centres = (np.arange(side) + 0.5) / side
    file_x = left + centres * (right - left) - 0.5  # the file pixel (x, y) each input pixel's centre falls on
    file_y = top + centres * (bottom - top) - 0.5
    inner = slice(2, side - 2)  # away from the border, where resampling clamps
    assert np.abs(pixels[inner, inner, 0] - (file_x * 255 / (width - 1))[None, inner]).max() < 2
    assert np.abs(pixels[inner, inner, 1] - (file_y * 255 / (height - 1))[inner, None]).max() < 2


def test_a_map_covers_the_crop_of_the_file_and_is_zero_beside_it():
    # 64x48 -> 43x32 (round(64 * 32 / 48)), the crop keeps columns 5..36 of 43, which are file columns
    # 5 * 64 / 43 = 7.44 to 37 * 64 / 43 = 55.07: the pixels centred at 7.5 ... 54.5, columns 7 to 54.
    box = input_box(InputSpec("memory", 32, store_size=32), 64, 48)
    full = to_image(np.ones((32, 32), np.float32), box, 64, 48)
    assert full.shape == (48, 64)
    assert np.all(full[:, 7:55] == 1) and not full[:, :7].any() and not full[:, 55:].any()


# ---------------------------------------------------------------------------------------------------------------
# Occlusion.

def test_occlusion_is_the_mean_probability_drop_under_the_patches_that_hide_each_pixel():
    region = (slice(4, 11), slice(19, 27))  # what the "model" looks at

    def probabilities(images: np.ndarray) -> np.ndarray:
        red = images[:, region[0], region[1], 0].astype(np.float64).mean(axis=(1, 2))
        p = 1 / (1 + np.exp(-(red - 120) / 20))
        return np.stack([p, 1 - p], 1)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, 32, 32, 3), dtype=np.uint8)
    images[0, region[0], region[1], 0] = 200
    images[1, region[0], region[1], 0] = 160
    fill = np.array([90, 90, 90], np.uint8)
    got = occlusion_maps(probabilities, images, [0, 0], fill, batch_size=7)  # chunks mix images

    patch, stride = default_patch(32), default_stride(32)
    assert (patch, stride) == (8, 4) and patch_starts(32, 8, 4) == list(range(0, 25, 4))
    assert patch_starts(227, default_patch(227), default_stride(227))[-2:] == [168, 171]  # flush with the border
    for n in range(2):
        base = probabilities(images[n:n + 1])[0, 0]
        total, count = np.zeros((32, 32)), np.zeros((32, 32))
        for top in range(0, 25, 4):
            for left in range(0, 25, 4):
                hidden = images[n].copy()
                hidden[top:top + 8, left:left + 8] = fill
                total[top:top + 8, left:left + 8] += base - probabilities(hidden[None])[0, 0]
                count[top:top + 8, left:left + 8] += 1
        expected = np.maximum(total / count, 0)
        assert np.allclose(got[n], expected / expected.max(), atol=1e-6)
        y, x = np.unravel_index(np.argmax(got[n]), got[n].shape)
        assert 4 <= y < 11 and 19 <= x < 27 and got[n][20:, :12].max() == 0


# ---------------------------------------------------------------------------------------------------------------
# The command and the API on a trained run and its export.

@pytest.fixture
def photos(tmp_path) -> list[Path]:
    return [red_square_image(tmp_path / "wide.png", 64, 48, (40, 4, 52, 16)),
            red_square_image(tmp_path / "small.png", 32, 32, (18, 2, 26, 10)),
            red_square_image(tmp_path / "tall.png", 36, 54, (4, 30, 16, 42))]


def test_explain_writes_heatmaps_at_each_files_size_and_overlays(red_run, photos, tmp_path):
    halves = np.zeros((48, 64, 3), np.uint8)
    halves[:, 32:] = 255  # dark left, light right: visible through any blend
    Image.fromarray(halves).save(tmp_path / "halves.jpg")
    files = [*photos, tmp_path / "halves.jpg"]
    result = run_cli("explain", red_run, *files, "--json", tmp_path / "maps.json", "--out", tmp_path / "png",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "maps.json").read_text())
    predicted = alexnet.predict(red_run, files, top_k=1, device="cpu")
    assert [p["predictions"][0]["class"] for p in predicted] == ["cat", "cat", "cat", "dog"]
    assert [r["image"] for r in records] == [str(f) for f in files]
    for record, file, prediction in zip(records, files, predicted):
        assert set(record) == {"image", "class", "probability", "method", "heatmap"} and record["method"] == "gradcam"
        best = prediction["predictions"][0]
        assert record["class"] == best["class"] and record["probability"] == pytest.approx(best["probability"], abs=1e-6)
        heatmap = np.array(record["heatmap"])
        width, height = Image.open(file).size
        assert heatmap.shape == (height, width) and heatmap.min() >= 0 and heatmap.max() == 1
    assert len(result.stdout.splitlines()) == len(files) + 1 and result.stdout.count("peaks at") == len(files)

    png = Image.open(tmp_path / "png" / "halves-gradcam.png")
    png.load()
    k = overlay.magnification(64, 48)
    assert png.size[0] >= 64 * k and png.size[1] >= 48 * k and k == 4
    drawn = np.asarray(png.convert("L"), np.float64)[overlay.TOP:overlay.TOP + 48 * k, overlay.LEFT:overlay.LEFT + 64 * k]
    assert drawn[:, :32 * k].mean() + 60 < drawn[:, 32 * k:].mean()  # the picture, where it belongs
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(f"{f.stem}-gradcam.png" for f in files)


def test_explain_gives_predicts_numbers_and_any_target_class(trained_run, photos):
    expected = alexnet.predict(trained_run, photos, top_k=3, device="cpu")
    explained = alexnet.explain(trained_run, photos, top_k=3, device="cpu")
    assert [r["predictions"] for r in explained] == [e["predictions"] for e in expected]
    ship = alexnet.explain(trained_run, photos, method="gradcam++", target="ship", device="cpu")
    for record, prediction in zip(ship, expected):
        assert record["class"] == "ship" and record["method"] == "gradcam++"
        assert record["probability"] == next(p["probability"] for p in prediction["predictions"] if p["class"] == "ship")


def test_occlusion_finds_the_red_square_in_the_file(red_run, photos):
    records = alexnet.explain(red_run, photos, method="occlusion", target="cat", backend="torch", device="cpu")
    squares = [(40, 4, 52, 16), (18, 2, 26, 10), (4, 30, 16, 42)]
    for record, (left, top, right, bottom) in zip(records, squares):
        peak, heatmap = record["peak"], record["heatmap"]
        assert left <= peak["x"] < right and top <= peak["y"] < bottom, (record["image"], peak)
        # Only patches over the square lower "cat": the map is zero wherever no patch reaching it does.
        far = np.ones(heatmap.shape, bool)
        far[max(top - 20, 0):bottom + 20, max(left - 20, 0):right + 20] = False
        assert heatmap[far].max() < 1e-3, record["image"]


def test_occlusion_on_an_exported_folder_runs_without_torch_and_matches_torch(red_run, red_export, photos, tmp_path):
    out = tmp_path / "onnx.json"
    blocked = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "explain", str(red_export), *map(str, photos),
                              "--method", "occlusion", "--target", "cat", "--json", str(out), "--out",
                              str(tmp_path / "png")], capture_output=True, text=True, timeout=300)
    assert blocked.returncode == 0, blocked.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(f"{p.stem}-occlusion.png" for p in photos)
    onnx = json.loads(out.read_text())
    torch_side = alexnet.explain(red_run, photos, method="occlusion", target="cat", backend="torch", device="cpu")
    for a, b in zip(onnx, torch_side):
        assert a["class"] == b["class"] == "cat" and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        assert np.abs(np.array(a["heatmap"]) - b["heatmap"]).max() < 1e-4 and b["heatmap"].max() == 1


@pytest.mark.parametrize("flags, named", [
    (["--target", "horse"], "--target 'horse' is not a class of this model; its classes: cat, dog, ship"),
    (["--layer", "features.conv9"], "--layer 'features.conv9' is not a layer"),
    (["--method", "occlusion", "--patch", "40"], "--patch must be between 1 and the model's input side 32"),
    (["--method", "occlusion", "--layer", "features.conv5"], "--layer chooses Grad-CAM's layer"),
    (["--stride", "2"], "--patch and --stride are occlusion's"),
])
def test_a_bad_flag_is_one_line_naming_it(trained_run, photos, capsys, flags, named):
    assert main(["explain", str(trained_run), str(photos[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and "Traceback" not in err


def test_gradcam_on_the_onnx_backend_points_to_occlusion(red_export, photos, capsys):
    assert main(["explain", str(red_export), str(photos[0]), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "--method occlusion" in err and err.count("\n") == 1


def test_an_unreadable_image_is_one_line_and_leaves_the_json_file_alone(trained_run, photos, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "maps.json"
    out.write_text("yesterday's maps\n")
    assert main(["explain", str(trained_run), str(photos[0]), str(broken), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {broken}" in err and err.count("\n") == 1
    assert out.read_text() == "yesterday's maps\n" and not list(tmp_path.glob(".maps.json*"))


class StreamedNet(Classifier):
    """A torch classifier of a streamed (photo) model, in memory: shorter side to 112, centre 99 px crop."""

    backend = "torch"

    def __init__(self):
        torch.manual_seed(0)
        model = create_model("alexnet-torchvision", num_classes=3, image_size=99).eval()
        spec = InputSpec("stream", 99, resize=112, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        train = SimpleNamespace(tta=False, tta_shift=0, channels_last=False)
        self.loaded = SimpleNamespace(model=model, spec=spec, config=SimpleNamespace(train=train),
                                      device=torch.device("cpu"))
        super().__init__(Path("streamed"), ["a", "b", "c"], spec, {"name": "alexnet-torchvision"}, {}, None)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            return torch.softmax(self.loaded.model(x), 1).numpy()


def test_a_streamed_models_map_covers_its_centre_crop_of_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    net = StreamedNet()
    for method in ("gradcam", "occlusion"):
        (record,) = explain_files(net, [tmp_path / "p.png"], method, target="b")
        heatmap = record["heatmap"]
        # 160x120 -> 149x112, the centre 99 px from (25, 6) to (124, 105): in the file x 26.85 to 133.15 and
        # y 6.43 to 112.5, so the pixels centred inside are columns 27 to 132 and rows 6 to 111.
        assert heatmap.shape == (120, 160) and heatmap.max() == 1 and record["class"] == "b"
        assert not heatmap[:, :27].any() and not heatmap[:, 133:].any()
        assert not heatmap[:6].any() and not heatmap[112:].any()
