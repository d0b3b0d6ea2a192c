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
    # Four samples, six classes (so top-5 is defined), values worked out by hand:
    probs = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1],     # label 0: predicted 0, right
                      [0.4, 0.3, 0.1, 0.1, 0.05, 0.05],   # label 1: predicted 0, wrong; 2nd best, in the top 5
                      [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],   # label 5: predicted 0, wrong; the worst, not in the top 5
                      [0.1, 0.1, 0.6, 0.1, 0.05, 0.05]])  # label 2: predicted 2, right
    labels = np.array([0, 1, 5, 2])
    classes = [f"c{i}" for i in range(6)]
    m = classification_metrics(probs, labels, classes)
    assert set(m) == {"accuracy", "top5", "num_samples", "classes", "per_class", "confusion_matrix", "chance"}
    # Each label once: chance is a quarter (the first of the tied classes, c0); 2 of 4 right by luck at 1/4 has
    # probability 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 67/256.
    assert m["chance"] == pytest.approx({"accuracy": 0.25, "class": "c0", "p_value": 67 / 256, "better": False})
    assert m["accuracy"] == pytest.approx(0.5) and m["top5"] == pytest.approx(0.75)
    assert m["num_samples"] == 4 and m["classes"] == classes
    assert [row[0] for row in m["confusion_matrix"]] == [1, 1, 0, 0, 0, 1] and m["confusion_matrix"][2][2] == 1
    # c0: predicted 3 times, right once -> precision 1/3, recall 1/1, F1 2 * (1/3) / (4/3) = 0.5
    assert m["per_class"]["c0"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    assert m["per_class"]["c5"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})


def test_top5_is_null_with_five_classes_or_fewer():
    probs = np.eye(3)[[0, 1, 2]]
    assert classification_metrics(probs, np.array([0, 1, 2]), ["a", "b", "c"])["top5"] is None
