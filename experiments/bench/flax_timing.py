"""flaxmnist's training step as the benchmark times it: a fresh train state, its FLOPs, its speed.

The models section's ``flaxmnist`` rows time the device-resident path (``lax.scan`` over indices
into the training set held on the device), ``flaxmnist_tfds`` the tf.data streaming path; the
race and ``op_profile.py`` use the train state and XLA's FLOP count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import measure
import numpy as np
import optax

from flaxmnist import losses, models
from flaxmnist.configs import default
from flaxmnist.data import input_pipeline
from flaxmnist.data.datasets import ArraySplit
from flaxmnist.training import step_functions as steps_lib
from flaxmnist.training.train_state import TrainState, create_train_state


def flax_state_and_steps(
    model_name: str, **overrides
) -> tuple[TrainState, steps_lib.StepFunctions]:
    """A fresh train state (Adam, lr 1e-3) of ``model_name`` and the jitted step functions."""
    config = default.get_config()
    config.update(model=model_name, **overrides)
    model = models.create_model(config, 10)
    state = create_train_state(model, (28, 28, 1), optax.adam(1e-3), jax.random.key(0))
    loss_fn = losses.get_loss("cross_entropy")
    return state, steps_lib.make_step_functions(loss_fn, steps_lib.normalize_images)


def training_flops(model_name: str, batch: int) -> float:
    """FLOPs of one training step as XLA counts them, with native convolutions.

    (The im2col layers loop over batch chunks, and XLA's cost analysis counts a loop body once.)
    """
    state, fns = flax_state_and_steps(model_name, conv_impl="xla", pool_impl="xla")
    batch_arrays = {
        "image": np.zeros((batch, 28, 28, 1), np.uint8),
        "label": np.zeros(batch, np.int32),
    }
    cost = fns.train_step.lower(state, batch_arrays, jax.random.key(1)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def device_runs(
    fns: steps_lib.StepFunctions, images: np.ndarray, labels: np.ndarray, batch: int, steps: int
) -> Callable:
    """``run(state, epoch, run_steps)``: steps over the first images, held on the device."""
    rng = jax.random.key(1)
    device_images, device_labels = jax.device_put((images, labels))

    def run(state: TrainState, epoch: int, run_steps: int = steps) -> TrainState:
        order = input_pipeline.epoch_order(
            rng, epoch, num_examples=batch * run_steps, batch_size=batch
        )
        state, metrics = fns.train_on_indices(state, device_images, device_labels, order, rng)
        jax.block_until_ready(metrics)
        return state

    return run


def streaming_runs(
    fns: steps_lib.StepFunctions, images: np.ndarray, labels: np.ndarray, batch: int, steps: int
) -> Callable:
    """``run(state, epoch, run_steps)``: steps over the first images, streamed by tf.data.

    The images are host arrays, as the tfds pipeline holds a split.
    """
    rng = jax.random.key(1)
    n = batch * steps
    split = ArraySplit(images[:n], labels[:n])

    def run(state: TrainState, epoch: int, run_steps: int = steps) -> TrainState:
        plan = input_pipeline.TrainEpoch(batch, rng=rng, epoch=epoch)
        dataset = input_pipeline.tf_train_dataset(split, plan)
        for item in dataset.take(run_steps).as_numpy_iterator():
            state, metrics = fns.train_step(state, item, rng)
        jax.block_until_ready(metrics)
        return state

    return run


def time_train_step(
    model_name: str, batch: int, steps: int, repeats: int, streaming: bool, tile: int = 1
) -> dict:
    """Times flaxmnist's train step (:func:`measure.time_repeats`), device-resident or streamed.

    ``tile`` > 1 trains on the training set repeated that many times (the dataset-size scaling).
    """
    images, labels = measure.mnist_arrays(tile=tile)
    state, fns = flax_state_and_steps(model_name)
    runs = streaming_runs if streaming else device_runs
    run = runs(fns, images, labels, batch, steps)
    first_step = functools.partial(run, epoch=0, run_steps=1)  # its own (one-step) program
    flops = training_flops(model_name, batch)
    return measure.time_repeats(run, state, repeats, flops, steps, first_step)
