"""Post-training int8: onnxruntime's static quantization of an exported graph, calibrated on training images.

The fp32 graph (uint8 images in, probabilities out, the run's views inside) keeps its contract: only the
convolutions and fully-connected layers compute in 8 bits (weights int8 per output channel, activations uint8
with ranges measured on calibration images); decoding's normalisation, the resize, the views and the softmax
stay fp32. The graph is written in QDQ form (QuantizeLinear / DequantizeLinear around each quantized layer),
which onnxruntime fuses into its integer kernels when it loads the file.

On a CPU without VNNI or AMX the 8-bit products go through 16-bit sums that can saturate; `reduce_range`
(7-bit weights) is then used, as onnxruntime's documentation advises.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AlexnetError
from .graph import INPUT, quiet_exporter, require

__all__ = ["METHODS", "QUANTIZED_OPS", "quantize_graph"]

METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


class _Images:
    """onnxruntime's CalibrationDataReader over uint8 images, `batch` at a time, every batch the same size (the
    histogram calibrators stack the batches' activations and need equal shapes): the last batch is filled up
    with the first images again."""

    def __init__(self, images: np.ndarray, batch: int):
        batch = min(batch, len(images))
        total = -(-len(images) // batch) * batch
        padded = np.concatenate([images, images[:total - len(images)]]) if total > len(images) else images
        self.used, self.batches_total = len(images), total // batch
        self.batches = iter([padded[i:i + batch] for i in range(0, total, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self.batches, None)
        return None if chunk is None else {INPUT: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:  # not needed: one calibration pass
        pass


def fold_every(batches: int, method: str) -> int | None:
    """How many batches minmax calibration keeps before folding them into its ranges, so memory does not grow
    with the images (entropy and percentile keep every batch until their histograms are built: None). Never a
    divisor of `batches`: onnxruntime's calibrator finds nothing to fold after a last batch that emptied it."""
    if method != "minmax" or batches <= 8:
        return None
    return next(k for k in range(8, batches) if batches % k)


def quantize_graph(fp32: Path, out: Path, images: np.ndarray, method: str = "minmax", reduce_range: bool = False,
                   batch: int = 32) -> dict[str, Any]:
    """Write `out`, the int8 form of the graph `fp32`, calibrated on `images` (uint8 (N, S, S, 3)).

    Returns what was done, for config.json: method, per-channel, reduce_range, operators, calibration size.
    """
    if method not in METHODS:
        raise AlexnetError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(images) == 0:
        raise AlexnetError("int8 calibration needs images; the calibration data has none")
    require("onnx", "onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="alexnet-int8-") as tmp, quiet_exporter(""):
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and constant folding first, so that every layer's tensors are known to the quantizer.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        reader = _Images(images, batch)
        try:
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibrate,
                            extra_options={"CalibTensorRangeSymmetric": False, "CalibMovingAverage": False,
                                           "CalibMaxIntermediateOutputs": fold_every(reader.batches_total, method)})
        except (ValueError, RuntimeError, KeyError) as e:  # onnxruntime's own errors for a graph it cannot take
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise AlexnetError(f"int8 quantization of {fp32.name} failed ({type(e).__name__}: {first}); the fp32 "
                               "graph is unaffected: export without --quantize") from None
    return {"method": method, "per_channel": True, "reduce_range": reduce_range, "format": "QDQ",
            "weights": "int8, per output channel, symmetric", "activations": "uint8, per tensor",
            "operators": list(QUANTIZED_OPS), "calibration_images": reader.used}
