"""`alexnet export`: a trained model as a self-describing folder (config.json, model.safetensors, model.onnx,
README.md) that loads without the training code's pickles: `alexnet.load_model(DIR)` or onnxruntime alone.

`folder` (the layout, reading it back) imports no torch; the rest is imported when used.
"""

from __future__ import annotations

__all__ = ["ExportResult", "export_model"]


def __getattr__(name: str):
    # Lazy, so reading an exported folder's config (alexnet.export.folder) does not pay for torch and onnx.
    if name in __all__:
        from . import build  # lazy: torch and onnx; alexnet.export.folder stays torch-free

        return getattr(build, name)
    raise AttributeError(f"module 'alexnet.export' has no attribute {name!r}")
