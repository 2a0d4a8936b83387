"""Load a trained run for inference or evaluation: ``flaxmnist.load_run(workdir)``.

Works in a fresh process: the model is rebuilt from the run's ``config.json`` and the state is
restored from its Orbax checkpoints (``latest``, ``best`` or a step number).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flaxmnist import models, optimizers, plugins
from flaxmnist.errors import FlaxmnistError
from flaxmnist.storage import checkpointing
from flaxmnist.training import step_functions
from flaxmnist.training.train_state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained model, its state and config, ready to predict."""

    config: ml_collections.ConfigDict
    model: nn.Module
    state: TrainState
    class_names: tuple[str, ...]
    step: int
    epoch: int
    normalization: dict[str, float]
    image_shape: tuple[int, ...]  # [H, W, C] of the images the model takes

    @functools.cached_property
    def _predict(self):
        preprocess = functools.partial(step_functions.normalize_images, **self.normalization)
        tta_shift = self.config.get("tta_shift", 0)
        return jax.jit(
            functools.partial(
                step_functions.predict_step, preprocess=preprocess, tta_shift=tta_shift
            )
        )

    def with_tta(self, shift: int) -> LoadedRun:
        """The same run, predicting with test-time augmentation ``shift`` (0: off)."""
        config = ml_collections.ConfigDict(self.config.to_dict())
        config.tta_shift = shift
        return dataclasses.replace(self, config=config)

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits [N, num_classes] for uint8 images [N, H, W, C], in batches.

        With the run's ``tta_shift`` > 0 these are test-time-augmented log-probabilities.
        """
        outputs = [
            np.asarray(self._predict(self.state, images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(outputs)


def tested_checkpoint(workdir: Path) -> str | int:
    """The checkpoint step the training run's test metrics came from (``latest`` if unknown)."""
    metrics_file, history_file = workdir / "metrics.json", workdir / "history.json"
    if not (metrics_file.exists() and history_file.exists()):
        return "latest"
    epoch = json.loads(metrics_file.read_text()).get("evaluated_epoch", 0)
    history = json.loads(history_file.read_text())
    return history[epoch - 1]["step"] if 0 < epoch <= len(history) else "latest"


def _select_step(checkpoints: checkpointing.RunCheckpoints, which: str | int) -> int:
    saved = checkpoints.steps()
    if not saved:
        raise FlaxmnistError(f"no checkpoints in {checkpoints.directory}")
    if which == "latest":
        return saved[-1]
    if which == "best":
        meta = checkpoints.read_meta(saved[-1])
        best_epoch = meta["stopper"]["best_epoch"]
        return meta["history"][best_epoch - 1]["step"] if best_epoch else saved[-1]
    if not str(which).isdigit():
        raise FlaxmnistError(
            f"checkpoint must be tested, latest, best or a step number, got {which!r}"
        )
    if int(which) not in saved:
        raise FlaxmnistError(f"no checkpoint at step {which}; saved steps: {saved}")
    return int(which)


def load_run(workdir: str | Path, checkpoint: str | int = "latest") -> LoadedRun:
    """Rebuilds the model of run ``workdir`` and restores one of its checkpoints.

    Works in a fresh process: the model comes from the run's ``config.json`` (and the modules in
    its ``import_modules``), the state from its Orbax checkpoints. Also ``flaxmnist.load_run``.

    Args:
      workdir: a run directory written by ``python -m flaxmnist.train`` or
        :func:`flaxmnist.training.loop.train_and_evaluate`.
      checkpoint: ``"latest"``, ``"best"`` (by the run's monitored metric), ``"tested"`` (the
        one behind the run's ``metrics.json``) or a step number.

    Returns:
      A :class:`LoadedRun`: ``config``, ``model``, ``state``, ``step``, ``epoch``,
      ``class_names`` and ``predict(images, batch_size=...) -> logits`` for uint8 images.

    Raises:
      FlaxmnistError: when ``workdir`` is no run directory or the checkpoint does not exist,
        is damaged, or belongs to another model.

    Example::

        import flaxmnist
        from flaxmnist.data import datasets

        run = flaxmnist.load_run("runs/convnet", "best")
        test = datasets.load_dataset("mnist").test
        accuracy = (run.predict(test.images).argmax(-1) == test.labels).mean()
    """
    workdir = Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.exists():
        raise FlaxmnistError(f"{workdir} is not a run directory (no config.json)")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    plugins.import_modules(config.import_modules)
    checkpoints = checkpointing.RunCheckpoints(workdir / "checkpoints", keep_latest=1, create=False)
    try:
        which = tested_checkpoint(workdir) if checkpoint == "tested" else checkpoint
        step = _select_step(checkpoints, which)
        meta = checkpoints.read_meta(step)
        model = models.create_model(config, len(meta["class_names"]))
        tx = optimizers.create_optimizer(config, steps_per_epoch=1)  # structure only
        template = create_train_state(
            model, tuple(meta["image_shape"]), tx, jax.random.key(0), config.get("ema_decay", 0.0)
        )
        state, meta = checkpoints.restore(step, template)
    finally:
        checkpoints.close()
    return LoadedRun(
        config,
        model,
        state,
        tuple(meta["class_names"]),
        step,
        meta["epoch"],
        meta["normalization"],
        tuple(meta["image_shape"]),
    )
