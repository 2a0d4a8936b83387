"""Everything a run needs, resolved from the config before any training starts.

:func:`build_experiment` checks the config, builds the device mesh, loads the data, splits off the
validation set, creates the model, optimizer and train state (or warm-starts it from another run)
and binds the loss, preprocessing and augmentation into the jitted step functions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from flaxmnist import losses, models, optimizers, plugins
from flaxmnist.config_validation import validate_config
from flaxmnist.data import augment, datasets
from flaxmnist.errors import ConfigError
from flaxmnist.training import parallel, step_functions, warm_start
from flaxmnist.training.train_state import QUICK_COMPILE, TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, resolved from the config before any training starts."""

    config: ml_collections.ConfigDict
    dataset: datasets.Dataset
    train: datasets.ArraySplit
    validation: datasets.ArraySplit | None
    positions: dict[str, np.ndarray]  # the splits' examples in the stored splits
    model: nn.Module
    state: TrainState
    fns: step_functions.StepFunctions
    schedule: optax.Schedule
    dropout_rng: jax.Array
    data_rng: jax.Array
    pixel_mean_std: tuple[float, float]
    mesh: jax.sharding.Mesh

    def data_info(self) -> dict[str, Any]:
        """What a model trained on this data needs at inference time."""
        return {
            "class_names": list(self.dataset.class_names),
            "image_shape": list(self.dataset.image_shape),
            "normalization": {"mean": self.pixel_mean_std[0], "std": self.pixel_mean_std[1]},
        }

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (incomplete last batches are skipped)."""
        return len(self.train) // self.config.batch_size


def pixel_normalization(
    config: ml_collections.ConfigDict, dataset: datasets.Dataset
) -> tuple[float, float]:
    """(mean, std) subtracted and divided after scaling pixels to [0, 1]."""
    return dataset.pixel_stats() if config.normalization == "standardize" else (0.0, 1.0)


def make_augment(config: ml_collections.ConfigDict, mean: float, std: float):
    """The configured on-device augmentation (background = a black pixel), or None when off."""
    augment_config = augment.AugmentConfig.from_config(config)
    if not augment_config.enabled:
        return None
    return functools.partial(augment.augment_batch, cfg=augment_config, fill=(0.0 - mean) / std)


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Resolves every name, loads the data and initialises the state (no training)."""
    validate_config(config)
    mesh = parallel.create_mesh(config.num_devices)
    parallel.check_divisible(
        mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size
    )
    plugins.import_modules(config.import_modules)
    loss_fn = losses.get_loss(config.loss, config.loss_options)
    dataset = datasets.load_dataset(config.dataset, config.data_dir or None)
    model = models.create_model(config, dataset.num_classes)
    stored_sizes = {"train": len(dataset.train), "test": len(dataset.test)}
    positions = datasets.run_positions(stored_sizes, config.validation_fraction, config.seed)
    splits = datasets.take_splits(positions, lambda stored: getattr(dataset, stored))
    train, validation = splits["train"], splits.get("validation")
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train)} training examples"
        )
    # The learning rate each epoch's record logs: one program, not one per operation.
    schedule = jax.jit(
        optimizers.create_schedule(config, steps_per_epoch), compiler_options=QUICK_COMPILE
    )
    tx = optimizers.create_optimizer(config, steps_per_epoch)
    init_rng, dropout_rng, data_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = create_train_state(model, dataset.image_shape, tx, init_rng, config.ema_decay)
    if config.init_from:
        state = warm_start.warm_start(state, config.init_from, dataset.class_names)
    state = parallel.put_replicated(state, mesh)
    mean, std = pixel_normalization(config, dataset)
    preprocess = functools.partial(step_functions.normalize_images, mean=mean, std=std)
    fns = step_functions.make_step_functions(
        loss_fn, preprocess, make_augment(config, mean, std), tta_shift=config.tta_shift
    )
    return Experiment(
        config,
        dataset,
        train,
        validation,
        positions,
        model,
        state,
        fns,
        schedule,
        dropout_rng,
        data_rng,
        (mean, std),
        mesh,
    )
