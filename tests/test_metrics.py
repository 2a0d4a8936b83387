import numpy as np
import pytest
from sklearn import metrics as skm

from flaxmnist import metrics

LABELS = np.array([0, 0, 1, 1, 1, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 0, 1])
NAMES = ["cat", "dog", "bird"]


def test_confusion_matrix_by_hand():
    expected = np.array([[1, 1, 0], [1, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, PREDICTIONS, 3), expected)


def test_per_class_scores_by_hand():
    scores = metrics.per_class_scores(metrics.confusion_matrix(LABELS, PREDICTIONS, 3))
    np.testing.assert_allclose(scores["precision"], [1 / 2, 2 / 4, 0.0])
    np.testing.assert_allclose(scores["recall"], [1 / 2, 2 / 3, 0.0])
    np.testing.assert_allclose(scores["f1"], [0.5, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 0.0])
    np.testing.assert_array_equal(scores["support"], [2, 3, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_report_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, 200))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress"]
    ours = metrics.classification_report(metrics.confusion_matrix(labels, predictions, 4), names)
    theirs = skm.classification_report(
        labels, predictions, target_names=names, digits=4, zero_division=0
    )
    assert ours == theirs


def test_top_k_accuracy_by_hand():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    labels = np.array([1, 0, 2])
    assert metrics.top_k_accuracy(probabilities, labels, 1) == 0.0
    assert metrics.top_k_accuracy(probabilities, labels, 2) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probabilities, labels, 3) == 1.0


def test_expected_calibration_error_by_hand():
    # Two bins of width 0.5: example confidences 0.9 (right), 0.8 (wrong), 0.4 (right; 3 classes).
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3]])
    labels = np.array([0, 1, 0])
    confidence, accuracy, counts = metrics.calibration_bins(probabilities, labels, num_bins=2)
    np.testing.assert_array_equal(counts, [1, 2])
    np.testing.assert_allclose(confidence, [0.4, 0.85])
    np.testing.assert_allclose(accuracy, [1.0, 0.5])
    expected = (1 * abs(1.0 - 0.4) + 2 * abs(0.5 - 0.85)) / 3
    assert metrics.expected_calibration_error(probabilities, labels, 2) == pytest.approx(expected)


def test_most_confused_pairs():
    matrix = np.array([[5, 3, 0], [1, 4, 7], [0, 0, 9]])
    pairs = metrics.most_confused_pairs(matrix, NAMES, top=5)
    assert pairs == [
        {"true": "dog", "predicted": "bird", "count": 7},
        {"true": "cat", "predicted": "dog", "count": 3},
        {"true": "dog", "predicted": "cat", "count": 1},
    ]


def test_evaluation_summary_is_consistent():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, 50)
    summary = metrics.evaluation_summary(logits, labels, NAMES)
    matrix = np.array(summary["confusion_matrix"])
    assert matrix.sum() == 50 == summary["num_examples"]
    assert np.trace(matrix) / 50 == pytest.approx(summary["accuracy"])
    assert summary["loss"] == pytest.approx(skm.log_loss(labels, metrics.softmax(logits)))
    assert summary["accuracy"] <= summary["top2_accuracy"] <= 1.0
    assert summary["macro_avg"]["support"] == 50
