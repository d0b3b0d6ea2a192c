"""The ONNX graph of a model: uint8 images in, class probabilities out, with everything `alexnet predict` does
after decoding inside it (normalisation, the resize to the model's side, the run's test-time views, softmax)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..data.memory import Normalizer
from ..data.pipeline import InputSpec
from ..engine.evaluation import view_logits
from ..errors import AlexnetError

# ONNX opset 18 (onnxruntime >= 1.14) has every operator the graph needs: Resize, reflect Pad, LRN's pooling.
OPSET = 18
INPUT, OUTPUT = "images", "probabilities"
EXTRA = "pip install 'alexnet[export]'"


def require(*modules: str) -> None:
    """Import the optional export dependencies up front, so a missing one is one line naming the extra."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise AlexnetError(f"{name} is not installed; ONNX export and its check need it: {EXTRA}") from None


@torch.no_grad()
def fold_pooled_batchnorm(model: nn.Module) -> int:
    """Fold each batch norm that follows a convolution, directly or through max-pools (conv -> pool -> bn, as
    the CIFAR networks order them), into that convolution, in place; returns how many were folded.

    A batch norm in eval mode is y = a * x + b per channel; max-pooling commutes with it wherever a > 0
    (max(a * x + b) = a * max(x) + b), so conv -> pool -> bn equals conv' -> pool with conv' = a * conv + b.
    A norm with any a <= 0 stays as it is. onnxruntime folds a norm directly after a convolution itself, but
    not one behind a pool: there it costs a pass over the activations, and in an int8 graph a dequantize,
    a layout change and a quantize around it.
    """
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        conv = None
        for name, layer in list(seq.named_children()):
            if isinstance(layer, nn.Conv2d):
                conv = layer
            elif isinstance(layer, nn.MaxPool2d) and conv is not None:
                continue
            elif (isinstance(layer, nn.BatchNorm2d) and conv is not None and not layer.training
                  and layer.running_var is not None):
                scale = torch.rsqrt(layer.running_var + layer.eps)
                if layer.weight is not None:
                    scale = scale * layer.weight
                shift = -layer.running_mean * scale + (layer.bias if layer.bias is not None else 0)
                if bool((scale > 0).all()):
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
                    conv.bias = nn.Parameter(bias * scale + shift)
                    setattr(seq, name, nn.Identity())
                    folded += 1
                conv = None
            else:
                conv = None
    return folded


class InferenceGraph(nn.Module):
    """uint8 RGB images (N, S, S, 3) -> probabilities (N, C): the exported graph, built from the project's own
    input step (`Normalizer`, as every loader feeds the model) and test-time views (`view_logits`, as
    `collect_logits` averages them)."""

    def __init__(self, model: nn.Module, spec: InputSpec, tta: bool, tta_shift: int):
        super().__init__()
        # A contiguous-format copy: the loaded model may be channels-last, which ONNX has no notion of.
        self.model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
        fold_pooled_batchnorm(self.model)
        self.normalize = Normalizer(list(spec.mean), list(spec.std), spec.image_size, torch.device("cpu"),
                                    channels_last=False)
        self.tta, self.tta_shift = tta, tta_shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images.permute(0, 3, 1, 2))  # NHWC -> NCHW; scale, centre, resize to the model's side
        logits = view_logits(self.model, x, self.tta, self.tta_shift)
        return torch.softmax(logits.float(), dim=1)


@contextlib.contextmanager
def quiet_exporter(logger_name: str = "torch.onnx") -> Iterator[None]:
    """Logs below errors, warnings and prints silenced: the exporter logs skipped torchvision operators and
    deprecation notes, the quantizer (logger_name="": the root logger) every tensor it leaves alone; noise for a
    user of `export`."""
    logger = logging.getLogger(logger_name or None)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def write_onnx(graph: InferenceGraph, side: int, path: Path, metadata: dict[str, str], doc: str) -> None:
    """Export `graph` for (batch, side, side, 3) uint8 input with a dynamic batch axis into one .onnx file."""
    require("onnx", "onnxscript")
    example = torch.zeros(2, side, side, 3, dtype=torch.uint8)  # 2, not 1: torch.export specialises a size of 1
    with quiet_exporter(), torch.no_grad():
        # The dynamo exporter (torch.export + onnxscript): the TorchScript one is deprecated. Weights go inside
        # the file (external_data=False): one graph file, under 2 GB for every AlexNet here.
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                                    external_data=False, verbose=False)
    program.model.doc_string = doc
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)
