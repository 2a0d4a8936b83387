"""How an epoch is cut into chunks, and the programs that run once per run or epoch."""

import functools
import math
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from helpers import REPO_ROOT

from flaxmnist import models
from flaxmnist.configs import default
from flaxmnist.data import input_pipeline
from flaxmnist.training import experiment, feeders
from flaxmnist.training.train_state import create_train_state


@pytest.mark.parametrize(
    ("steps", "chunks", "length"),
    [
        (468, 20, 26),  # MNIST at batch 128: 18 chunks of 26, not 19 of 24 and one of 12
        (16, 3, 8),  # ceil gives 6; 7 does not divide 16, 8 does
        (14, 5, 3),  # no length from 3 to 6 divides 14: ceil's 3, 3, 3, 3, 2
        (467, 20, 24),  # a prime epoch: ceil
        (5, 20, 1),  # fewer steps than chunks: one step each
        (10, 1, 10),
        (1, 1, 1),
    ],
)
def test_chunk_steps_divides_the_epoch_when_a_length_up_to_twice_the_target_does(
    steps, chunks, length
):
    assert feeders.chunk_steps(steps, chunks) == length


def _device_feeder(config):
    exp = experiment.build_experiment(config)
    eval_splits = {"test": exp.dataset.test}
    inputs = feeders.FeederInputs(
        exp.fns, config, exp.train, eval_splits, exp.positions, exp.data_rng, exp.mesh
    )
    return exp, feeders.FEEDERS["device"](inputs)


@pytest.mark.slow
def test_a_device_epoch_runs_one_compiled_program_when_a_chunk_length_divides_it(tiny_config):
    tiny_config.update(num_devices=1, chunks_per_epoch=3)
    exp, feeder = _device_feeder(tiny_config)
    steps = exp.steps_per_epoch
    assert steps % math.ceil(steps / 3) != 0  # ceil alone would leave a shorter last chunk
    chunks = feeder.train_chunks(exp.state, 1, exp.dropout_rng)
    lengths = [len(metrics["loss"]) for _, metrics in chunks]
    assert sum(lengths) == steps and len(set(lengths)) == 1 and len(lengths) < 3
    assert exp.fns.train_on_indices._cache_size() == 1


def test_the_quickly_compiled_initial_state_is_bitwise_the_default_compilations():
    config = default.get_config()
    config.model = "cnn_simple"
    model = models.create_model(config, num_classes=10)
    tx = optax.adam(1e-3)
    quick = create_train_state(model, (28, 28, 1), tx, jax.random.key(3))

    def create(rng):  # what create_train_state compiles, at XLA's default options
        variables = models.init_variables(model, (28, 28, 1), rng)
        return variables["params"], tx.init(variables["params"])

    params, opt_state = jax.jit(create)(jax.random.key(3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, quick.params, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, quick.opt_state, opt_state)


def test_the_quickly_compiled_epoch_order_is_bitwise_the_default_compilations(tiny_config):
    tiny_config.update(num_devices=1)
    exp, feeder = _device_feeder(tiny_config)
    order = functools.partial(
        input_pipeline.epoch_order, num_examples=len(exp.train), batch_size=tiny_config.batch_size
    )
    for epoch in (1, 2):
        np.testing.assert_array_equal(
            feeder.batch_indices(exp.data_rng, epoch), jax.jit(order)(exp.data_rng, epoch)
        )


@pytest.mark.slow
def test_a_linen_model_never_imports_flax_nnx():
    code = (
        "import sys; from flaxmnist import models; from flaxmnist.configs import default; "
        "import flaxmnist.train, flaxmnist.training.loop; "
        "models.create_model(default.get_config(), num_classes=10); "
        "assert 'flax.nnx' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
