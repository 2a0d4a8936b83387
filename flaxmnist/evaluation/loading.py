"""Load a trained run for inference or evaluation: ``flaxmnist.load_run(workdir)``.

Works in a fresh process: the model is rebuilt from the run's ``config.json`` and the state is
restored from its Orbax checkpoints (``latest``, ``best`` or a step number).

Reading a run never runs its code. A run directory may come from someone else, and its
``config.json`` names the plugin modules it was trained with (``import_modules``): importing them
would run whatever they contain. They are imported only when the caller allows it
(``allow_plugins=True``, ``--allow_plugins`` on the command line), as Keras's
``load_model(safe_mode=True)`` and ``torch.load(weights_only=True)`` refuse code by default. A run
whose model, optimizer or schedule is one of the package's loads without them. Sizes read from the
run (image shape, classes, the model's state) are checked before any array is allocated.
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
from flaxmnist.errors import FlaxmnistError, one_line
from flaxmnist.registry import Registry
from flaxmnist.storage import checkpointing
from flaxmnist.training import step_functions
from flaxmnist.training.train_state import TrainState, initial_state

# Bounds on what a run directory may ask this process to allocate (every shipped model is far
# below them: the largest state, resnet_fashion's, is 33 MB).
MAX_STATE_BYTES = 4 << 30
MAX_IMAGE_SIDE = 4096
MAX_CHANNELS = 4
MAX_CLASSES = 100_000


class PluginsRequiredError(FlaxmnistError):
    """A run's model (or optimizer, schedule) is defined by plugin code the caller did not allow."""


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
        meta = checkpoints.read_meta_checked(saved[-1])
        best_epoch = meta["stopper"]["best_epoch"]
        return meta["history"][best_epoch - 1]["step"] if best_epoch else saved[-1]
    if not str(which).isdigit():
        raise FlaxmnistError(
            f"checkpoint must be tested, latest, best or a step number, got {which!r}"
        )
    if int(which) not in saved:
        raise FlaxmnistError(f"no checkpoint at step {which}; saved steps: {saved}")
    return int(which)


def load_run(
    workdir: str | Path, checkpoint: str | int = "latest", *, allow_plugins: bool = False
) -> LoadedRun:
    """Rebuilds the model of run ``workdir`` and restores one of its checkpoints.

    Works in a fresh process: the model comes from the run's ``config.json``, the state from its
    Orbax checkpoints. Also ``flaxmnist.load_run``.

    Args:
      workdir: a run directory written by ``python -m flaxmnist.train`` or
        :func:`flaxmnist.training.loop.train_and_evaluate`.
      checkpoint: ``"latest"``, ``"best"`` (by the run's monitored metric), ``"tested"`` (the
        one behind the run's ``metrics.json``) or a step number.
      allow_plugins: import the modules in the run's ``import_modules`` (plugin code that
        registers its model, say). Off by default: the run's files decide which code those are,
        so allow it only for runs whose code you trust. A model already registered in this
        process (by your own import) needs no permission.

    Returns:
      A :class:`LoadedRun`: ``config``, ``model``, ``state``, ``step``, ``epoch``,
      ``class_names`` and ``predict(images, batch_size=...) -> logits`` for uint8 images.

    Raises:
      PluginsRequiredError: when the run needs plugin code and ``allow_plugins`` is False.
      FlaxmnistError: when ``workdir`` is no run directory, the checkpoint does not exist, is
        damaged or belongs to another model, or the run asks for more memory than any model of
        this package could need.

    Example::

        import flaxmnist
        from flaxmnist.data import datasets

        run = flaxmnist.load_run("runs/convnet", "best")
        test = datasets.load_dataset("mnist").test
        accuracy = (run.predict(test.images).argmax(-1) == test.labels).mean()
    """
    workdir = Path(workdir)
    config = read_run_config(workdir)
    if allow_plugins:
        plugins.import_modules(config.import_modules)
    else:
        check_names_resolve(workdir, config)
    checkpoints = checkpointing.RunCheckpoints(workdir / "checkpoints", keep_latest=1, create=False)
    try:
        which = tested_checkpoint(workdir) if checkpoint == "tested" else checkpoint
        step = _select_step(checkpoints, which)
        meta = checkpoints.read_meta_checked(step)
        class_names, image_shape = check_data_info(workdir, meta)
        model = models.create_model(config, len(class_names))
        tx = optimizers.create_optimizer(config, steps_per_epoch=1)  # structure only
        arguments = (model, image_shape, tx, jax.random.key(0), config.get("ema_decay", 0.0))
        abstract = jax.eval_shape(functools.partial(initial_state, *arguments))
        check_state_size(workdir, abstract)
        state, meta = checkpoints.restore_checked(step, on_default_device(abstract))
    finally:
        checkpoints.close()
    return LoadedRun(
        config,
        model,
        state,
        class_names,
        step,
        meta["epoch"],
        meta["normalization"],
        image_shape,
    )


def read_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run recorded in ``config.json``; a missing or damaged one is a user error."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FlaxmnistError(f"{workdir} is not a run directory (no config.json)")
    try:
        recorded = json.loads(config_file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FlaxmnistError(f"{config_file} cannot be read ({one_line(e)})") from None
    if not isinstance(recorded, dict):
        raise FlaxmnistError(f"{config_file} is not a JSON object")
    return ml_collections.ConfigDict(recorded)


def plugin_modules(config: ml_collections.ConfigDict) -> list[str]:
    """The plugin modules a run was trained with (its ``import_modules`` entries)."""
    return [
        spec.strip() for spec in str(config.get("import_modules", "")).split(",") if spec.strip()
    ]


def unresolved_names(config: ml_collections.ConfigDict) -> list[str]:
    """``model 'tiny'`` for each name in ``config`` that no registry of this process knows."""
    fields: dict[str, Registry] = {
        "model": models.MODELS,
        "optimizer": optimizers.OPTIMIZERS,
        "schedule": optimizers.SCHEDULES,
    }
    return [
        f"{field} {config.get(field)!r}"
        for field, registry in fields.items()
        if config.get(field) not in registry
    ]


def check_names_resolve(
    workdir: Path, config: ml_collections.ConfigDict, *, allow_hint: str = ""
) -> None:
    """Refuses, in one line, a run whose names only its (unimported) plugin code defines.

    ``allow_hint`` says how the caller allows plugins (the default names ``--allow_plugins``).
    """
    missing = unresolved_names(config)
    modules = plugin_modules(config)
    if not (missing and modules):
        return  # everything resolves, or no plugin could help: the registry's own error follows
    hint = allow_hint or (
        "rerun with --allow_plugins (load_run(..., allow_plugins=True)) if you trust that code"
    )
    raise PluginsRequiredError(
        f"{workdir} needs its plugin code for its {', '.join(missing)}: "
        f"{', '.join(modules)}; loading a run never runs its code unless asked: {hint}"
    )


def check_data_info(workdir: Path, meta: dict) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The class names and image shape a checkpoint records, checked against sane bounds."""
    class_names, image_shape = meta.get("class_names"), meta.get("image_shape")
    if not (
        isinstance(class_names, list)
        and 1 < len(class_names) <= MAX_CLASSES
        and all(isinstance(name, str) for name in class_names)
    ):
        raise FlaxmnistError(
            f"{workdir}: its checkpoint records no usable class names "
            f"(a list of 2 to {MAX_CLASSES} strings)"
        )
    if not (
        isinstance(image_shape, list)
        and len(image_shape) == 3
        and all(type(side) is int for side in image_shape)
        and 0 < image_shape[0] <= MAX_IMAGE_SIDE
        and 0 < image_shape[1] <= MAX_IMAGE_SIDE
        and 0 < image_shape[2] <= MAX_CHANNELS
    ):
        raise FlaxmnistError(
            f"{workdir}: its checkpoint records an image shape {image_shape!r}; expected "
            f"[height, width, channels] up to {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}x{MAX_CHANNELS}"
        )
    return tuple(class_names), tuple(image_shape)


def on_default_device(abstract: TrainState) -> TrainState:
    """``abstract``'s arrays placed on the default device: a restore target nothing computes."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract
    )


def check_state_size(workdir: Path, abstract) -> None:
    """Refuses a run whose train state (its shapes, from ``jax.eval_shape``) is huge."""
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(abstract))
    if size > MAX_STATE_BYTES:
        raise FlaxmnistError(
            f"{workdir}: its config builds a model whose train state needs {size / 2**30:.1f} GiB "
            f"(more than the {MAX_STATE_BYTES >> 30} GiB any model here needs); not loaded"
        )
