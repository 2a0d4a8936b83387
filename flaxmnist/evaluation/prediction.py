"""A trained run's predictions on your own image files: the top classes and their probabilities."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import digit_images, metrics
from flaxmnist.evaluation.loading import LoadedRun


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The most probable classes of one file, most probable first."""

    file: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]

    def line(self) -> str:
        """``digit.png: 7 99.2 %, 1 0.5 %, 9 0.2 %``."""
        ranked = ", ".join(
            f"{name} {p:.1%}".replace("%", " %")
            for name, p in zip(self.classes, self.probabilities, strict=True)
        )
        return f"{self.file}: {ranked}"

    def record(self) -> dict:
        """The prediction as JSON-ready data."""
        return {
            "file": self.file,
            "top": [
                {"class": name, "probability": p}
                for name, p in zip(self.classes, self.probabilities, strict=True)
            ],
        }


def framed_images(run: LoadedRun, paths: Sequence[str | Path]) -> np.ndarray:
    """The images the model sees for ``paths``: uint8 ``[N, 28, 28, 1]``.

    Each file is framed as the run's dataset frames its images (see
    :func:`flaxmnist.evaluation.digit_images.load_image_as`).

    Raises:
      FlaxmnistError: for a file that is no readable image.
    """
    return np.stack([digit_images.load_image_as(p, run.config.dataset) for p in paths])


def predict_files(run: LoadedRun, paths: Sequence[str | Path], top: int = 3) -> list[Prediction]:
    """Classifies image files (PNG, JPEG, BMP, GIF, TIFF, WebP or ``.npy``) with a trained run.

    Each file is framed as the run's dataset frames its images (:func:`framed_images`) before
    the model sees it.

    Args:
      run: a run from :func:`flaxmnist.load_run`.
      paths: files of one digit (or one piece of clothing, for a Fashion-MNIST model) each.
      top: how many classes to report per file.

    Returns:
      One :class:`Prediction` per file, in order.

    Raises:
      FlaxmnistError: for no files, a bad ``top``, or a file that is no readable image.
    """
    if not paths:
        raise FlaxmnistError("name at least one image file")
    if not 1 <= top <= len(run.class_names):
        raise FlaxmnistError(f"top must be between 1 and {len(run.class_names)}, got {top}")
    images = framed_images(run, paths)
    probabilities = metrics.softmax(run.predict(images))
    predictions = []
    for path, row in zip(paths, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        predictions.append(
            Prediction(
                str(path),
                tuple(str(run.class_names[i]) for i in best),
                tuple(float(row[i]) for i in best),
            )
        )
    return predictions
