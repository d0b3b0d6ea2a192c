import numpy as np
import pytest

from alexnet.metrics import classification_metrics, confusion_matrix, per_class_scores, topk_accuracy


def test_confusion_matrix_rows_are_true_classes():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(preds, labels, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_scores_match_hand_computed_values():
    cm = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    s = per_class_scores(cm)
    # class 0: tp 1, predicted 2, actual 2 -> P 0.5, R 0.5; class 1: P 1/2, R 1; class 2: P 1, R 2/3
    assert s["precision"] == pytest.approx([0.5, 0.5, 1.0])
    assert s["recall"] == pytest.approx([0.5, 1.0, 2 / 3])
    assert s["f1"] == pytest.approx([0.5, 2 / 3, 0.8])
    assert s["support"].tolist() == [2, 1, 3]


def test_class_never_predicted_has_zero_precision_not_nan():
    s = per_class_scores(np.array([[2, 0], [1, 0]]))
    assert s["precision"][1] == 0 and s["f1"][1] == 0


def test_topk_accuracy_counts_label_within_k_best():
    probs = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 1, 0])
    assert topk_accuracy(probs, labels, 1) == pytest.approx(0.0)
    assert topk_accuracy(probs, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, labels, 3) == pytest.approx(1.0)


def test_classification_metrics_schema_and_values():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=50)
    labels = rng.integers(0, 10, 50)
    classes = [f"c{i}" for i in range(10)]
    m = classification_metrics(probs, labels, classes)
    assert set(m) == {"accuracy", "top5", "num_samples", "classes", "per_class", "confusion_matrix"}
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert m["num_samples"] == 50 and m["classes"] == classes
    assert sum(map(sum, m["confusion_matrix"])) == 50
    assert set(m["per_class"]["c3"]) == {"precision", "recall", "f1", "support"}
    assert 0 <= m["top5"] <= 1


def test_top5_is_null_with_five_classes_or_fewer():
    probs = np.eye(3)[[0, 1, 2]]
    assert classification_metrics(probs, np.array([0, 1, 2]), ["a", "b", "c"])["top5"] is None
