"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) on one layer of a torch model.

For the class score y (the logit, before the softmax) and the layer's feature maps A_k:

- Grad-CAM weighs each map by its mean gradient: w_k = mean_ij dy/dA_kij;
- Grad-CAM++ by its positive gradients, each weighted by a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3) with
  g = dy/dA_kij: the paper's closed form for exp(y), exact for a network that is piecewise linear in A (ReLU,
  max-pooling, linear layers), whose higher derivatives of y vanish;

and the map is ReLU(sum_k w_k A_k), upsampled bilinearly to the input side. A run that predicts with test-time
views (flips, shifted copies) is explained over the same views: each view's map is brought back onto the image
(a mirrored view's map mirrored back, a shifted one's shifted back) and the maps are averaged with the views'
weights, as `alexnet predict` averages their logits. The result is normalised to [0, 1] per image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.memory import Normalizer, to_device_tensor
from ..engine.evaluation import stacked_views
from ..errors import AlexnetError

if TYPE_CHECKING:
    from ..inference import LoadedModel

__all__ = ["CAM_METHODS", "class_activation_maps", "conv_layers", "find_layer", "input_maps", "merge_views"]

CAM_METHODS = ("gradcam", "gradcam++")


def conv_layers(model: nn.Module) -> list[str]:
    """The names of the model's convolutions, in the order `named_modules` gives them (input to output)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def default_layer(model: nn.Module, convs: list[str]) -> str:
    """The rectified maps of the last convolution: the first ReLU after it ("features.relu5"), else the convolution.

    Grad-CAM's feature maps are rectified (the paper's A^k follow a ReLU) and Grad-CAM++'s weights assume
    maps that are never negative. Taken on the convolution's own output, which batch norm and a ReLU still
    follow, the weighted sum was negative everywhere for 5 of the 6 most confident cat/dog mistakes of a
    `cifar10` run, so their maps came out blank; Grad-CAM++ there missed squares it finds on the rectified maps."""
    after = False
    for name, module in model.named_modules():
        if name == convs[-1]:
            after = True
        elif after and isinstance(module, nn.ReLU):
            return name
    return convs[-1]


def find_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer to explain: `name` (a module name such as "features.conv5"), by default the rectified output of
    the last convolution (`default_layer`), whose maps keep the most class-specific features at a spatial
    resolution."""
    convs = conv_layers(model)
    if name is None:
        if not convs:
            raise AlexnetError("this model has no convolution for Grad-CAM; use --method occlusion")
        name = default_layer(model, convs)
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise AlexnetError(f"--layer {name!r} is not a layer of this model; its convolutions are: {', '.join(convs)}")
    return name, modules[name]


@contextlib.contextmanager
def captured(name: str, layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Keep the layer's output of the next forward pass (a forward hook), to differentiate the score against."""
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else type(output).__name__
            raise AlexnetError(f"--layer {name} gives outputs of shape {shape} per image, not feature maps "
                               "(channels, height, width); choose a convolution, e.g. the default (the last one)")
        outputs.append(output)
        # The layer's consumers get a copy: an in-place ReLU after it (torchvision's AlexNet) would otherwise
        # overwrite the very tensor the gradient is taken against.
        return output.clone()

    handle = layer.register_forward_hook(keep)
    try:
        yield outputs
    finally:
        handle.remove()


def cam_weights(activations: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """(B, K) weights of the K feature maps, from the maps (B, K, h, w) and the score's gradients against them."""
    if method == "gradcam":
        return grads.mean(dim=(2, 3))
    if method == "gradcam++":
        g2 = grads * grads
        denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g2 * grads
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))
    raise AlexnetError(f"--method must be one of {', '.join(CAM_METHODS)} or occlusion, got {method!r}")


def view_sources(side: int, tta: bool, tta_shift: int) -> tuple[torch.Tensor, list[float]]:
    """Which image pixel each pixel of each test-time view shows, (V, side * side), and the views' weights.

    The views are made by the very function `alexnet predict` uses (`stacked_views`), from a grid holding each
    pixel's own index: whatever the views do (mirror, shift, reflect-pad), the grid records it. On the CPU, in
    float64, which holds every index of a side up to 4,096 exactly (and which MPS devices lack)."""
    grid = torch.arange(side * side, dtype=torch.float64).view(1, 1, side, side)
    views, weights = stacked_views(grid, tta, tta_shift)
    return views.reshape(len(weights), -1).round().long(), weights


def merge_views(maps: torch.Tensor, sources: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Maps of the views (V, N, S, S) -> maps of the images (N, S, S): each view's map is moved back onto the
    image, then the views are averaged with their weights. A pixel a shifted view does not show is averaged
    over the views that do; one a view shows twice (its reflect-padded border) takes the mean of both."""
    views, n, side = maps.shape[0], maps.shape[1], maps.shape[-1]
    total = maps.new_zeros(n, side * side)
    seen_weight = maps.new_zeros(side * side)
    for v in range(views):
        count = torch.bincount(sources[v], minlength=side * side).to(maps.dtype)
        back = maps.new_zeros(n, side * side).index_add_(1, sources[v], maps[v].reshape(n, -1))
        back = back / count.clamp(min=1)
        total += weights[v] * back
        seen_weight += weights[v] * (count > 0).to(maps.dtype)
    return (total / seen_weight).view(n, side, side)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map (N, H, W) divided by its maximum; an all-zero map stays zero."""
    top = maps.amax(dim=(1, 2), keepdim=True)
    return torch.where(top > 0, maps / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(maps))


def class_activation_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str | None = None,
                          method: str = "gradcam", tta: bool = False, tta_shift: int = 0) -> torch.Tensor:
    """(N, S, S) maps in [0, 1], on the CPU, of the `targets` classes (N,) for a normalised input batch `x`
    (N, 3, S, S), over the test-time views `tta` / `tta_shift` (as `alexnet.engine.evaluation.stacked_views`
    makes them). `layer`: a module name, by default the last convolution."""
    name, module = find_layer(model, layer)
    n, side = x.shape[0], x.shape[-1]
    views, weights = stacked_views(x, tta, tta_shift)
    # An input that asks for gradients keeps the graph even when every weight is frozen (requires_grad=False).
    views = views.detach().requires_grad_(True)
    view_targets = targets.to(x.device).repeat(len(weights))  # views are stacked view-major: v * N + n
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), captured(name, module) as outputs:
            logits = model(views)
            scores = logits.float().gather(1, view_targets[:, None]).sum()  # each view's score is its own
            (grads,) = torch.autograd.grad(scores, outputs[0])
    finally:
        model.train(was_training)
    activations = outputs[0].detach().float()
    weights_k = cam_weights(activations, grads.float(), method)
    cams = F.relu((weights_k[:, :, None, None] * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    sources, _ = view_sources(side, tta, tta_shift)
    return normalise(merge_views(cams.view(len(weights), n, side, side).cpu(), sources, weights))


def input_maps(loaded: LoadedModel, images: np.ndarray, targets: Sequence[int], layer: str | None = None,
               method: str = "gradcam", batch_size: int = 16) -> np.ndarray:
    """(N, S, S) maps over uint8 images (N, S, S, 3) as `alexnet predict` prepares them, for a loaded model
    (`alexnet.inference.load_model`): normalised as its loaders feed it, with the run's test-time views, and
    brought back from the network's input side to S when the network reads a resized copy."""
    spec, train = loaded.spec, loaded.config.train
    find_layer(loaded.model, layer)  # a wrong name fails before any work
    normalize = Normalizer(list(spec.mean), list(spec.std), spec.image_size, loaded.device, train.channels_last)
    side = images.shape[1]
    targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_device_tensor(images[start:start + batch_size], loaded.device))
        cams = class_activation_maps(loaded.model, x, targets[start:start + batch_size], layer, method,
                                     train.tta, train.tta_shift)
        if cams.shape[-1] != side:
            cams = F.interpolate(cams[:, None], size=(side, side), mode="bilinear", align_corners=False,
                                 antialias=cams.shape[-1] > side)[:, 0].clamp(0, 1)
        out.append(cams.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, side, side), dtype=np.float32)
