"""Classification metrics on plain arrays: accuracy, top-k, confusion matrix, per-class P/R/F1."""

from __future__ import annotations

import math
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
        "chance": compare_with_chance(float((preds == labels).mean()), scores["support"], classes)
        if len(labels) else None,
    }


def chance_level(counts: np.ndarray | list[int]) -> tuple[float, int]:
    """(share, class index) of the largest class, from the images per class: the accuracy of a model that always
    answers it."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        return float("nan"), 0
    return float(counts.max() / counts.sum()), int(counts.argmax())


def chance_p_value(correct: int, total: int, chance: float) -> float:
    """P(at least `correct` of `total` right by luck at rate `chance`): the one-sided binomial tail, summed in
    log space so that it holds for large `total`."""
    if total <= 0 or correct <= 0:
        return 1.0
    if chance <= 0:
        return 0.0
    if chance >= 1:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [math.lgamma(total + 1) - math.lgamma(i + 1) - math.lgamma(total - i + 1) + i * log_p
             + (total - i) * log_q for i in range(correct, total + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def compare_with_chance(accuracy: float, counts: np.ndarray | list[int], classes: list[str],
                        alpha: float = 0.05) -> dict[str, Any]:
    """How an accuracy on images with these per-class `counts` compares with always answering the largest class:
    its share, the class, the binomial p-value of doing this well by luck, and whether the accuracy is above chance
    at level `alpha`."""
    share, index = chance_level(counts)
    total = int(np.sum(counts))
    p = chance_p_value(int(round(accuracy * total)), total, share)
    return {"accuracy": share, "class": classes[index], "p_value": p,
            "better": bool(accuracy > share and p < alpha)}


def chance_sentence(accuracy: float, total: int, chance: dict[str, Any], what: str = "images") -> str:
    """One plain sentence: above chance, or not, and what to do about it."""
    base = f"chance is {chance['accuracy'] * 100:.2f}% (always answering {chance['class']!r}, the largest class)"
    if chance["better"]:
        return f"{base}; {accuracy * 100:.2f}% is above it"
    return (f"warning: {accuracy * 100:.2f}% on {total:,} {what} is not better than chance: {base}, and luck "
            f"alone would do this well with probability {chance['p_value']:.2f}. The model has not learned to tell "
            "the classes apart: try more images per class, more --epochs, or fine-tuning pretrained weights "
            "(--preset finetune --init-from WEIGHTS, docs/finetuning.md)")
