import numpy as np
import pytest
from sklearn import metrics as skm

from flaxmnist.evaluation import metrics

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


def test_evaluation_summary_matches_scikit_learn():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, 50)
    summary = metrics.evaluation_summary(logits, labels, NAMES)
    probabilities = metrics.softmax(logits)
    predictions = probabilities.argmax(-1)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0)
    assert summary["num_examples"] == 50
    np.testing.assert_array_equal(
        summary["confusion_matrix"], skm.confusion_matrix(labels, predictions, labels=[0, 1, 2])
    )
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    assert summary["loss"] == pytest.approx(skm.log_loss(labels, probabilities))
    assert summary["top2_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, probabilities, k=2)
    )
    assert summary["accuracy"] < summary["top2_accuracy"]  # the check above is not vacuous
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=[0, 1, 2], zero_division=0
    )
    for i, name in enumerate(NAMES):
        got = summary["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    for kind in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, predictions, average=kind, zero_division=0
        )
        got = summary[f"{kind}_avg"]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (p, r, f, 50)
        )
    assert summary["most_confused"] == metrics.most_confused_pairs(
        np.array(summary["confusion_matrix"]), NAMES
    )


def test_evaluation_summary_calibration_error_by_hand():
    # Confidences 0.9 (right), 0.8 (wrong), 0.4 (right). Two bins: (1 * |1 - 0.4| + 2 *
    # |0.5 - 0.85|) / 3; the default 15 bins hold one example each: (0.1 + 0.8 + 0.6) / 3.
    probabilities = np.array([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.4, 0.3, 0.3]])
    logits, labels = np.log(probabilities), np.array([0, 1, 0])
    two_bins = metrics.evaluation_summary(logits, labels, NAMES, num_bins=2)
    assert two_bins["expected_calibration_error"] == pytest.approx(1.3 / 3)
    default = metrics.evaluation_summary(logits, labels, NAMES)
    assert default["expected_calibration_error"] == pytest.approx(1.5 / 3)


def test_calibration_bins_are_closed_on_the_right():
    # A confidence of exactly 0.5 belongs to the bin (0, 0.5], not (0.5, 1].
    probabilities = np.array([[0.5, 0.5], [0.75, 0.25]])
    confidence, accuracy, counts = metrics.calibration_bins(probabilities, np.array([1, 0]), 2)
    np.testing.assert_array_equal(counts, [1, 1])
    np.testing.assert_allclose(confidence, [0.5, 0.75])
    np.testing.assert_allclose(accuracy, [0.0, 1.0])  # argmax of a tie is class 0
