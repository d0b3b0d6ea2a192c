"""Strict JSON for everything a run writes or prints (history, config, metrics, predictions)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: strict JSON (browsers, jq, serde) has no NaN literal.

    numpy arrays and scalars become lists and Python numbers on the way.
    """
    if isinstance(obj, (np.ndarray, np.generic)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON, indented: non-finite floats (an epoch without validation) are written as null."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)
