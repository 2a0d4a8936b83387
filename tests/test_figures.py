"""Tests of flaxmnist.evaluation.figures: the numbers behind each figure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from flaxmnist.evaluation import figures

NAMES = ("zero", "one", "two", "three")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers


def indexed_images(num: int, size: int = 6) -> np.ndarray:
    """uint8 [num, size, size, 1] images whose pixels all equal their index (to find them)."""
    return np.broadcast_to(
        np.arange(num, dtype=np.uint8)[:, None, None, None], (num, size, size, 1)
    )


def image_axes(fig: Figure) -> list:
    """The axes that show an image, in drawing order."""
    return [ax for ax in fig.axes if ax.images]


def image_indices(fig: Figure) -> list[int]:
    """Which indexed image each grid cell shows."""
    return [int(ax.images[0].get_array()[0, 0]) for ax in image_axes(fig)]


def suptitle(fig) -> str:
    """The (sub)figure's title; ``Figure.get_suptitle`` only exists from matplotlib 3.8."""
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in image_axes(fig)]


def bars(ax, label: str | None = None) -> list:
    """Rectangles of the bar containers of ``ax`` (only the one labelled ``label`` if given)."""
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    if label is not None:
        containers = [c for c in containers if c.get_label() == label]
        assert len(containers) == 1, [c.get_label() for c in ax.containers]
    return [patch for c in containers for patch in c.patches]


def vertical_lines(ax) -> list[float]:
    """x of the vertical lines (axvline) drawn on ``ax``."""
    xs = []
    for line in ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        if len(x) == 2 and x[0] == x[1] and tuple(y) == (0, 1):
            xs.append(float(x[0]))
    return xs


def softmax_rows(rows: list[list[float]]) -> np.ndarray:
    probs = np.asarray(rows, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def history(num_epochs: int = 4, with_val: bool = True) -> list[dict]:
    records = []
    for epoch in range(1, num_epochs + 1):
        record = {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 1 - 0.1 / epoch}
        if with_val:
            record |= {"val_loss": 1.2 / epoch, "val_accuracy": 1 - 0.2 / epoch}
        records.append(record)
    return records


# ----------------------------------------------------------------------------- data


def test_sample_grid_titles_name_the_label_of_each_shown_image():
    images = indexed_images(40)
    labels = np.arange(40) % 4
    fig = figures.sample_grid(images, labels, NAMES, n=9, seed=3)
    shown = image_indices(fig)
    assert len(shown) == 9 and len(set(shown)) == 9  # without replacement
    assert titles(fig) == [NAMES[labels[i]] for i in shown]
    assert image_indices(figures.sample_grid(images, labels, NAMES, n=9, seed=3)) == shown
    assert image_indices(figures.sample_grid(images, labels, NAMES, n=9, seed=4)) != shown
    assert image_axes(fig)[0].images[0].get_clim() == (0, 255)  # faint stays faint
    assert suptitle(fig) == "Random training samples"


def test_sample_grid_accepts_fewer_images_than_n_and_3d_images():
    images = indexed_images(5)[..., 0]  # [N, H, W]
    fig = figures.sample_grid(images, [0, 1, 2, 3, 0], NAMES, n=25, title="tiny")
    assert sorted(image_indices(fig)) == [0, 1, 2, 3, 4]
    assert suptitle(fig) == "tiny"


def test_grids_of_no_images_say_so():
    empty = np.zeros((0, 6, 6, 1), np.uint8)
    fig = figures.prediction_grid(figures.ScoredImages(empty, [], np.zeros((0, 3)), CLASSES3))
    assert image_axes(fig) == []
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["No images to show."]
    assert suptitle(fig) == "Predictions"


def test_scored_images_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="length mismatch"):
        figures.ScoredImages(indexed_images(3), [0, 1], np.full((3, 2), 0.5))
    with pytest.raises(ValueError):
        figures.ScoredImages(indexed_images(2), [0, 1], np.full((3, 2), 0.5))


def test_sample_grid_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="length mismatch"):
        figures.sample_grid(indexed_images(5), [0, 1], NAMES)


def test_class_distribution_bar_heights_are_the_counts_per_class():
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 4, 101), rng.integers(0, 3, 17)  # class 3 absent from test
    fig = figures.class_distribution(train, test, NAMES)
    ax = fig.axes[0]
    train_bars = bars(ax, "train (101 images)")
    test_bars = bars(ax, "test (17 images)")
    assert [b.get_height() for b in train_bars] == np.bincount(train, minlength=4).tolist()
    assert [b.get_height() for b in test_bars] == np.bincount(test, minlength=4).tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)


# ----------------------------------------------------------------------------- training


def test_training_curves_plot_the_history_and_mark_the_best_epoch():
    records = history()
    fig = figures.training_curves(records, best_epoch=3)
    loss_ax, acc_ax = fig.axes
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert lines["train"].get_xdata().tolist() == [1, 2, 3, 4]
        np.testing.assert_allclose(
            lines["train"].get_ydata(), [r[f"train_{metric}"] for r in records]
        )
        np.testing.assert_allclose(
            lines["validation"].get_ydata(), [r[f"val_{metric}"] for r in records]
        )
        assert vertical_lines(ax) == [3.0]
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == metric


def test_training_curves_without_validation_or_best_epoch():
    fig = figures.training_curves(history(3, with_val=False))
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train"]
        assert vertical_lines(ax) == []
    with pytest.raises(ValueError, match="empty"):
        figures.training_curves([])


def reference_centred_average(values: np.ndarray, window: int) -> np.ndarray:
    out = []
    for i in range(len(values)):
        lo = max(0, i - window // 2)
        hi = min(len(values), i - window // 2 + window)
        out.append(np.nanmean(values[lo:hi]))
    return np.asarray(out)


def test_step_loss_curve_raw_average_and_epoch_boundaries():
    steps = np.arange(1, 31)
    losses = np.linspace(2.0, 0.5, 30) + np.tile([0.2, -0.2], 15)
    losses[7] = np.nan  # a skipped step does not poison the average
    epochs = np.repeat([1, 2, 3], 10)
    fig = figures.step_loss_curve(steps, losses, epochs=epochs, smoothing=5)
    ax = fig.axes[0]
    raw, smooth = (line for line in ax.get_lines() if not line.get_label().startswith("_"))
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    assert smooth.get_label() == "moving average (5 steps)"
    np.testing.assert_allclose(smooth.get_ydata(), reference_centred_average(losses, 5))
    assert np.isfinite(smooth.get_ydata()).all()
    assert vertical_lines(ax) == [10.5, 20.5]
    assert [t.get_text() for t in ax.texts] == ["epoch 1", "epoch 2", "epoch 3"]


def test_step_loss_curve_default_window_and_no_epochs():
    fig = figures.step_loss_curve(np.arange(500), np.ones(500))
    ax = fig.axes[0]
    assert vertical_lines(ax) == []
    assert "moving average (10 steps)" in [line.get_label() for line in ax.get_lines()]


def test_overlaid_curves_one_line_per_run_with_the_metric():
    runs = {"a": history(4), "b": history(2), "no-val": history(3, with_val=False)}
    fig = figures.overlaid_curves(runs, metric="val_accuracy")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_label()[0] != "_"}
    assert set(lines) == {"a", "b"}
    np.testing.assert_allclose(lines["b"].get_ydata(), [r["val_accuracy"] for r in history(2)])
    assert "no-val" in ax.get_legend().get_title().get_text()
    with pytest.raises(ValueError, match="val_loss"):
        figures.overlaid_curves({"x": history(2, with_val=False)}, metric="val_loss")


def test_model_comparison_bar_lengths_and_best_runs():
    names = ["small", "medium", "large"]
    accuracies, losses = [0.97, 0.99, 0.98], [0.10, 0.05, 0.04]
    fig = figures.model_comparison(names, accuracies, losses)
    acc_ax, loss_ax = fig.axes
    np.testing.assert_allclose([b.get_width() for b in bars(acc_ax)], accuracies)
    np.testing.assert_allclose([b.get_width() for b in bars(loss_ax)], losses)
    green = to_rgba("tab:green")
    assert [b.get_facecolor() == green for b in bars(acc_ax)] == [False, True, False]
    assert [b.get_facecolor() == green for b in bars(loss_ax)] == [False, False, True]
    assert [t.get_text() for t in acc_ax.get_yticklabels()] == names


# ----------------------------------------------------------------------------- evaluation

MATRIX = np.array([[5, 1, 0, 0], [2, 7, 1, 0], [0, 0, 9, 3], [0, 0, 0, 0]])


def cell_texts(ax) -> dict[tuple[int, int], str]:
    """Annotation text of each heatmap cell, keyed by (row, column)."""
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }


def test_confusion_heatmap_annotates_the_counts():
    fig = figures.confusion_matrix_heatmap(MATRIX, NAMES)
    ax = fig.axes[0]
    texts = cell_texts(ax)
    assert len(texts) == MATRIX.size
    assert all(texts[cell] == str(count) for cell, count in np.ndenumerate(MATRIX))
    np.testing.assert_array_equal(ax.images[0].get_array(), MATRIX)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(NAMES)
    assert f"{21 / 28:.2%}" in ax.get_title()


def test_confusion_heatmap_normalizes_rows():
    fig = figures.confusion_matrix_heatmap(MATRIX, NAMES, normalize=True)
    ax = fig.axes[0]
    row_sums = MATRIX.sum(axis=1, keepdims=True)
    expected = np.divide(MATRIX, row_sums, out=np.zeros(MATRIX.shape), where=row_sums > 0)
    np.testing.assert_allclose(ax.images[0].get_array(), expected)
    texts = cell_texts(ax)
    assert all(texts[cell] == f"{value:.2f}" for cell, value in np.ndenumerate(expected))
    assert "row-normalized" in ax.get_title()


def test_confusion_heatmap_skips_annotations_for_many_classes():
    matrix = np.eye(40, dtype=int)
    fig = figures.confusion_matrix_heatmap(matrix, [str(i) for i in range(40)])
    assert len(fig.axes[0].texts) == 0


def test_per_class_accuracy_bars_are_diagonal_over_row_sum():
    fig = figures.per_class_accuracy(MATRIX, NAMES)
    ax = fig.axes[0]
    heights = [b.get_height() for b in bars(ax)]
    np.testing.assert_allclose(heights[:3], [5 / 6, 7 / 10, 9 / 12])
    assert np.isnan(heights[3])  # no example of the class: no bar, labelled n/a
    reference = [line for line in ax.get_lines() if line.get_label().startswith("overall")]
    assert len(reference) == 1
    np.testing.assert_allclose(reference[0].get_ydata(), [21 / 28, 21 / 28])
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["83.3%", "70.0%", "75.0%", "n/a"]


# Four images, 3 classes. Predictions: 0 right (90%), 1 wrong (80%), 2 right (50%), 3 wrong (60%).
PRED_LABELS = np.array([0, 2, 2, 1])
PRED_PROBS = softmax_rows([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.3, 0.2, 0.5], [0.1, 0.3, 0.6]])
CLASSES3 = ("A", "B", "C")  # short: one-line titles


def test_prediction_grid_titles_and_colors():
    fig = figures.prediction_grid(
        figures.ScoredImages(indexed_images(4), PRED_LABELS, PRED_PROBS, CLASSES3)
    )
    assert titles(fig) == [
        "pred A (90%) / true A",
        "pred A (80%) / true C",
        "pred C (50%) / true C",
        "pred C (60%) / true B",
    ]
    colors = [to_rgba(ax.title.get_color()) for ax in image_axes(fig)]
    correct = PRED_PROBS.argmax(axis=1) == PRED_LABELS
    assert [c == to_rgba(figures.CORRECT_COLOR) for c in colors] == correct.tolist()
    assert [c == to_rgba(figures.WRONG_COLOR) for c in colors] == (~correct).tolist()


def test_prediction_grid_limits_to_n_and_wraps_long_names():
    names = ("T-shirt/top", "Ankle boot", "Bag")
    fig = figures.prediction_grid(
        figures.ScoredImages(indexed_images(4), PRED_LABELS, PRED_PROBS, names), n=2
    )
    assert image_indices(fig) == [0, 1]
    assert titles(fig) == [
        "pred T-shirt/top (90%) /\ntrue T-shirt/top",
        "pred T-shirt/top (80%) /\ntrue Bag",
    ]


def test_confident_mistakes_picks_the_most_confident_wrong_predictions():
    rng = np.random.default_rng(1)
    num = 30
    labels = rng.integers(0, 3, num)
    probs = rng.dirichlet(np.ones(3), num)
    fig = figures.confident_mistakes(
        figures.ScoredImages(indexed_images(num), labels, probs, CLASSES3), n=4
    )
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    expected = wrong[np.argsort(-confidence[wrong])][:4]
    assert image_indices(fig) == expected.tolist()
    assert titles(fig) == [
        f"pred {CLASSES3[predicted[i]]} ({confidence[i]:.0%}) / true {CLASSES3[labels[i]]}"
        for i in expected
    ]
    red = to_rgba(figures.WRONG_COLOR)
    assert all(to_rgba(ax.title.get_color()) == red for ax in image_axes(fig))
    assert f"of {len(wrong)} errors in {num} images" in suptitle(fig)


def test_confident_mistakes_small_example_and_no_mistakes():
    fig = figures.confident_mistakes(
        figures.ScoredImages(indexed_images(4), PRED_LABELS, PRED_PROBS, CLASSES3)
    )
    assert image_indices(fig) == [1, 3]  # 80 % before 60 %; the right ones are left out
    labels = PRED_PROBS.argmax(axis=1)
    fig = figures.confident_mistakes(
        figures.ScoredImages(indexed_images(4), labels, PRED_PROBS, CLASSES3)
    )
    assert image_axes(fig) == []
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["No mistakes among 4 images."]


def test_ambiguous_images_picks_the_highest_entropy_with_top2_titles():
    probs = softmax_rows(
        [
            [0.98, 0.01, 0.01],  # confident
            [0.34, 0.33, 0.33],  # most uncertain
            [0.1, 0.5, 0.4],
            [0.05, 0.05, 0.9],
            [0.45, 0.1, 0.45],  # tie between A and C: the lower index first
        ]
    )
    labels = np.array([0, 2, 2, 2, 2])
    fig = figures.ambiguous_images(
        figures.ScoredImages(indexed_images(5), labels, probs, CLASSES3), n=3
    )
    entropy = -(probs * np.log(probs)).sum(axis=1)
    assert image_indices(fig) == np.argsort(-entropy)[:3].tolist() == [1, 4, 2]
    assert titles(fig) == [
        "A 34% · B 33%\ntrue C",
        "A 45% · C 45%\ntrue C",
        "B 50% · C 40%\ntrue C",
    ]
    colors = [to_rgba(ax.title.get_color()) for ax in image_axes(fig)]
    assert colors == [to_rgba(figures.WRONG_COLOR)] * 3


def test_reliability_diagram_omits_empty_bins():
    confidence = [0.0, 0.35, 0.0, 0.72, 0.95]
    accuracy = [0.0, 0.30, 0.0, 0.80, 0.90]
    counts = [0, 12, 0, 40, 300]
    fig = figures.reliability_diagram(confidence, accuracy, counts, ece=0.0421)
    ax, count_ax = fig.axes
    accuracy_bars = bars(ax, "accuracy")
    assert [b.get_x() for b in accuracy_bars] == pytest.approx([0.2, 0.6, 0.8])
    assert [b.get_width() for b in accuracy_bars] == pytest.approx([0.2] * 3)
    assert [b.get_height() for b in accuracy_bars] == pytest.approx([0.30, 0.80, 0.90])
    gaps = bars(ax, "gap to mean confidence")
    assert [b.get_y() + b.get_height() for b in gaps] == pytest.approx([0.35, 0.72, 0.95])
    assert [b.get_height() for b in bars(count_ax)] == [12, 40, 300]
    assert "ECE 4.21%" in ax.get_title()
    diagonal = [line for line in ax.get_lines() if line.get_label() == "perfect calibration"]
    assert diagonal[0].get_xydata().tolist() == [[0, 0], [1, 1]]


def test_reliability_diagram_without_ece_and_with_edges():
    fig = figures.reliability_diagram([0.6, 0.9], [0.5, 0.95], [3, 4], bin_edges=[0.5, 0.8, 1.0])
    ax = fig.axes[0]
    assert ax.get_title() == "Reliability diagram"
    assert [b.get_x() for b in bars(ax, "accuracy")] == pytest.approx([0.5, 0.8])
    with pytest.raises(ValueError, match="edges"):
        figures.reliability_diagram([0.5], [0.5], [1], bin_edges=[0, 0.5, 1])


# ----------------------------------------------------------------------------- model internals


def test_conv_kernels_one_image_per_filter_on_a_symmetric_scale():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 2, 10))
    fig = figures.conv_kernels(kernel)
    axes = image_axes(fig)
    assert len(axes) == 10
    for i, ax in enumerate(axes):
        np.testing.assert_allclose(ax.images[0].get_array(), kernel[:, :, 0, i])
    limit = np.abs(kernel[:, :, 0]).max()
    assert axes[0].images[0].get_clim() == pytest.approx((-limit, limit))
    fig = figures.conv_kernels(kernel, max_filters=4, input_channel=None)
    axes = image_axes(fig)
    assert len(axes) == 4
    np.testing.assert_allclose(axes[3].images[0].get_array(), kernel[:, :, :, 3].mean(axis=2))


def test_feature_maps_one_row_per_layer_plus_the_input():
    image = indexed_images(1, size=8)[0]
    activations = [
        ("conv1", np.ones((6, 6, 5))),
        ("conv2", np.arange(2 * 2 * 30.0).reshape(2, 2, 30)),
    ]
    fig = figures.feature_maps(image, activations, max_channels=8)
    assert len(fig.subfigs) == 3
    counts = [sum(bool(ax.images) for ax in subfig.axes) for subfig in fig.subfigs]
    assert counts == [1, 5, 8]
    assert [suptitle(subfig) for subfig in fig.subfigs] == [
        "input 8x8x1",
        "conv1: 6x6x5 (first 5 channels)",
        "conv2: 2x2x30 (first 8 channels)",
    ]
    conv2 = [ax for ax in fig.subfigs[2].axes if ax.images]
    np.testing.assert_array_equal(conv2[7].images[0].get_array(), activations[1][1][..., 7])


# ----------------------------------------------------------------------------- output


def test_save_figure_writes_a_png_and_creates_folders(tmp_path):
    fig = figures.training_curves(history(2), best_epoch=1)
    path = figures.save_figure(fig, tmp_path / "a" / "b" / "curves.png")
    data = path.read_bytes()
    assert path == tmp_path / "a" / "b" / "curves.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    # The figure stays usable; a path without a suffix still gets a PNG.
    again = figures.save_figure(fig, tmp_path / "no_suffix")
    assert again.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_module_builds_figures_without_importing_pyplot():
    code = (
        "import sys, numpy as np; from flaxmnist.evaluation import figures as v\n"
        "fig = v.class_distribution([0, 1], [1], ['a', 'b'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print(type(fig).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "Figure"


def test_per_class_comparison_bar_heights_match_the_input():
    per_class = {"a": {"cat": 0.9, "dog": 0.8}, "b": {"cat": 0.95, "dog": 0.7}}
    fig = figures.per_class_comparison(per_class)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == pytest.approx([0.9, 0.8, 0.95, 0.7])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
