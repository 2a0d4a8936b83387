"""Plots of data, training runs and trained models, as plain ``matplotlib`` figures.

Every function takes numpy arrays or plain Python lists (history records, confusion matrices,
softmax probabilities, kernels) and returns a new :class:`matplotlib.figure.Figure` built with the
object API: nothing touches pyplot's global state, nothing calls ``plt.show``. The figures render
headless (scripts, tests, CI) and display themselves inline in Jupyter and Colab when they are the
last expression of a cell; :func:`save_figure` writes one to disk.

Images are uint8 arrays ``[N, H, W, 1]`` or ``[N, H, W]``, shown in grayscale on the fixed 0–255
range so that a faint digit stays faint. Accuracies are fractions in [0, 1], shown as percentages.

The figures live in one module per subject, all re-exported here:

- :mod:`.image_grids`: random samples, predictions, confident mistakes, ambiguous images;
- :mod:`.classification`: class counts, confusion matrix, per-class accuracy, reliability diagram;
- :mod:`.training`: training curves, per-step loss, and runs compared;
- :mod:`.internals`: conv kernels and feature maps;
- :mod:`.common`: colours, figure creation and :func:`save_figure` (atomic), shared by all.

Example::

    from flaxmnist.data import datasets
    from flaxmnist.evaluation import figures

    data = datasets.load_dataset("fashion_mnist")
    fig = figures.sample_grid(data.train.images, data.train.labels, data.class_names)
    figures.save_figure(fig, "plots/samples.png")
"""

from flaxmnist.evaluation.figures.classification import (
    class_distribution,
    confusion_matrix_heatmap,
    per_class_accuracy,
    reliability_diagram,
)
from flaxmnist.evaluation.figures.common import CORRECT_COLOR, WRONG_COLOR, save_figure
from flaxmnist.evaluation.figures.image_grids import (
    ScoredImages,
    ambiguous_images,
    confident_mistakes,
    prediction_grid,
    sample_grid,
)
from flaxmnist.evaluation.figures.internals import conv_kernels, feature_maps
from flaxmnist.evaluation.figures.training import (
    model_comparison,
    overlaid_curves,
    per_class_comparison,
    step_loss_curve,
    training_curves,
)

__all__ = [
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "ScoredImages",
    "ambiguous_images",
    "class_distribution",
    "confident_mistakes",
    "confusion_matrix_heatmap",
    "conv_kernels",
    "feature_maps",
    "model_comparison",
    "overlaid_curves",
    "per_class_accuracy",
    "per_class_comparison",
    "prediction_grid",
    "reliability_diagram",
    "sample_grid",
    "save_figure",
    "step_loss_curve",
    "training_curves",
]
