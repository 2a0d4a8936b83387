"""The worker of the ``pipelines`` section: trains the Flax example's CNN through one pipeline.

    python experiments/bench/pipeline_worker.py --pipeline=grain --epochs=2

A fresh process per run (``pipelines.pipeline_runs`` starts it). It builds the feeder of
``--pipeline`` (``device``, ``tfds`` or ``grain``) the way ``flaxmnist.train`` does, trains
``--epochs`` epochs over all 60,000 training images with the recipe of Flax's MNIST example (SGD
lr 0.1, momentum 0.9, batch 128), tests once, and prints one ``RESULT {json}`` line: the
feeder's set-up seconds, each epoch's seconds, the test evaluation's seconds and accuracy, and
the peak RSS.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import measure
import optax
from absl import flags
from pipelines import PIPELINE_BATCH, PIPELINES

from flaxmnist import cli, errors, losses
from flaxmnist.configs import default
from flaxmnist.data import datasets
from flaxmnist.models import layers
from flaxmnist.training import feeders, parallel, records
from flaxmnist.training import step_functions as steps_lib
from flaxmnist.training.train_state import TrainState, create_train_state


class FlaxExampleCNN(nn.Module):
    """The CNN of Flax's MNIST example: two 3x3 convolutions, average pooling, a 256-unit layer.

    Its convolutions are flaxmnist's (``flax.linen.Conv``'s "SAME" 3x3, im2col on CPU: XLA:CPU's
    own is many times slower inside ``lax.scan``), so every pipeline runs the same fast step. No
    dropout, no BatchNorm: ``train`` is unused.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits [N, 10] for images [N, 28, 28, 1]."""
        for features in (32, 64):
            x = nn.relu(layers.Conv(features, padding="SAME")(x))
            x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(features=256)(x.reshape((x.shape[0], -1))))
        return nn.Dense(features=10)(x)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the worker's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("pipeline", None, PIPELINES, "The input pipeline to train through.", **fv)
    flags.DEFINE_integer("epochs", 2, "Epochs to train (the first compiles).", lower_bound=1, **fv)
    flags.mark_flag_as_required("pipeline", flag_values=flag_values)


def feeder_inputs_and_state(pipeline: str) -> tuple[feeders.FeederInputs, TrainState]:
    """What ``pipeline``'s feeder of MNIST is built from; a fresh :class:`FlaxExampleCNN` state."""
    config = default.get_config()
    config.update(input_pipeline=pipeline, batch_size=PIPELINE_BATCH, validation_fraction=0.0)
    dataset = datasets.load_dataset("mnist")
    stored_sizes = {"train": len(dataset.train), "test": len(dataset.test)}
    positions = datasets.run_positions(stored_sizes, config.validation_fraction, config.seed)
    mesh = parallel.create_mesh(1)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(FlaxExampleCNN(), (28, 28, 1), tx, jax.random.key(0))
    state = parallel.put_replicated(state, mesh)
    fns = steps_lib.make_step_functions(
        losses.get_loss("cross_entropy"), steps_lib.normalize_images
    )
    inputs = feeders.FeederInputs(
        fns, config, dataset.train, {"test": dataset.test}, positions, jax.random.key(1), mesh
    )
    return inputs, state


def train_through(pipeline: str, epochs: int) -> dict:
    """Trains ``epochs`` epochs through ``pipeline``'s feeder, then tests.

    Returns:
      ``pipeline``, ``setup_s`` (the feeder's set-up), ``epoch_s`` (each epoch), ``eval_s`` and
      ``test_accuracy``.
    """
    inputs, state = feeder_inputs_and_state(pipeline)
    begin = time.perf_counter()
    feeder = feeders.FEEDERS[pipeline](inputs)
    result = {"pipeline": pipeline, "setup_s": time.perf_counter() - begin, "epoch_s": []}
    for epoch in range(1, epochs + 1):
        begin = time.perf_counter()
        chunks = list(feeder.train_chunks(state, epoch, jax.random.key(2)))
        state = jax.block_until_ready(chunks[-1][0])
        result["epoch_s"].append(time.perf_counter() - begin)
    begin = time.perf_counter()
    result["test_accuracy"] = records.summarize(feeder.evaluate(state, "test"))[1]
    result["eval_s"] = time.perf_counter() - begin
    return result


def main(argv: list[str]) -> None:
    """Trains through one pipeline and prints its RESULT line (with this process's peak RSS)."""
    del argv  # cli.parse_flags refuses positional arguments
    result = train_through(flags.FLAGS.pipeline, flags.FLAGS.epochs)
    measure.emit_result({**result, "peak_rss_mb": measure.peak_rss_mb()})


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
