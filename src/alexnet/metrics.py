"""Classification metrics on plain arrays: accuracy, top-k, confusion matrix, per-class P/R/F1."""

from __future__ import annotations

from typing import Any

import numpy as np


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose true label is among the k highest scores."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    topk = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    idx = labels.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where a ratio is undefined (as scikit-learn)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The `alexnet evaluate --json` schema: accuracy, top5, per-class scores, confusion matrix."""
    num_classes = len(classes)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(preds, labels, num_classes)
    scores = per_class_scores(cm)
    return {
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        # Top-5 only means something when there are more than five classes.
        "top5": topk_accuracy(probs, labels, 5) if num_classes > 5 else None,
        "num_samples": int(len(labels)),
        "classes": list(classes),
        "per_class": {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
