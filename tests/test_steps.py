import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flaxmnist
from flaxmnist import datasets, losses, models, steps, trainer
from flaxmnist.configs import default
from flaxmnist.train_state import create_train_state

IMAGE_SHAPE = (16, 16, 1)
CROSS_ENTROPY = losses.get_loss("cross_entropy")  # the steps take get_loss's signature


def _state(model_name="mlp", learning_rate=1e-2):
    config = default.get_config()
    config.model = model_name
    model = models.create_model(config, num_classes=10)
    return create_train_state(model, IMAGE_SHAPE, optax.adam(learning_rate), jax.random.key(0))


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
    }


def _train_step():
    return jax.jit(
        functools.partial(
            steps.train_step, loss_fn=CROSS_ENTROPY, preprocess=steps.normalize_images
        )
    )


def test_normalize_images():
    images = jnp.array([0, 51, 255], jnp.uint8)
    chex.assert_trees_all_close(steps.normalize_images(images), jnp.array([0.0, 0.2, 1.0]))
    chex.assert_trees_all_close(
        steps.normalize_images(images, mean=0.2, std=0.5),
        jnp.array([-0.4, 0.0, 1.6]),
        atol=1e-6,
    )


def test_metric_sums_respect_the_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    per_example = jnp.array([0.5, 1.5, 4.0])
    sums = steps.metric_sums(logits, labels, per_example, mask=jnp.array([1.0, 1.0, 0.0]))
    chex.assert_trees_all_close(sums, {"loss": 2.0, "correct": 1.0, "count": 2.0})


@pytest.mark.parametrize("model_name", ["mlp_dropout", "cnn_deep"])
def test_train_step_reduces_loss_on_a_fixed_batch_and_compiles_once(model_name):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(state, batch, rng):
        return steps.train_step(
            state, batch, rng, loss_fn=CROSS_ENTROPY, preprocess=steps.normalize_images
        )

    state, batch, rng = _state(model_name), _batch(), jax.random.key(1)
    first = None
    for _ in range(15):
        state, metrics = train_step(state, batch, rng)
        first = metrics["loss"] if first is None else first
    assert int(state.step) == 15
    assert float(metrics["loss"]) < 0.5 * float(first)
    assert float(metrics["count"]) == 16


def test_dropout_key_changes_with_the_step():
    state, batch, rng = _state("mlp_dropout"), _batch(), jax.random.key(1)
    train_step = _train_step()
    s1, _ = train_step(state, batch, rng)
    again, _ = train_step(state, batch, rng)
    chex.assert_trees_all_equal(s1.params, again.params)  # same step + same key: identical


def test_scanned_training_equals_sequential_train_steps():
    fns = steps.make_step_functions(CROSS_ENTROPY, steps.normalize_images)
    data = _batch(n=24, seed=3)
    indices = jnp.array([[0, 1, 2, 3], [7, 6, 5, 4], [20, 21, 22, 23]])
    rng = jax.random.key(5)
    sequential = _state("mlp_dropout")
    expected_losses = []
    for row in np.asarray(indices):
        batch = {k: v[row] for k, v in data.items()}
        sequential, metrics = _train_step()(sequential, batch, rng)
        expected_losses.append(float(metrics["loss"]))
    scanned, per_step = fns.train_on_indices(
        _state("mlp_dropout"), jnp.asarray(data["image"]), jnp.asarray(data["label"]), indices, rng
    )
    chex.assert_trees_all_close(scanned.params, sequential.params, atol=1e-6)
    chex.assert_trees_all_close(per_step["loss"], jnp.array(expected_losses), atol=1e-5)


def test_evaluation_of_padded_batches_counts_every_example_once():
    fns = steps.make_step_functions(CROSS_ENTROPY, steps.normalize_images)
    state, data = _state(), _batch(n=10, seed=4)
    padded = {
        "image": np.concatenate([data["image"], np.zeros((2, *IMAGE_SHAPE), np.uint8)]),
        "label": np.concatenate([data["label"], np.zeros(2, np.int32)]),
        "mask": np.array([1.0] * 10 + [0.0] * 2, np.float32),
    }
    stacked = jax.tree_util.tree_map(lambda x: x.reshape(3, 4, *x.shape[1:]), padded)
    totals = fns.evaluate_batches(state, stacked)
    logits = fns.predict_step(state, data["image"])
    expected_loss = losses.cross_entropy(logits, data["label"]).sum()
    expected_correct = (jnp.argmax(logits, -1) == data["label"]).sum()
    chex.assert_trees_all_close(
        totals, {"loss": expected_loss, "correct": expected_correct, "count": 10.0}, rtol=1e-5
    )


@losses.register("test_step_echo")
def _step_echo(logits, labels, *, step):
    # Each example's loss is the step it is given; the 0 * logits term keeps the params in play.
    return step + 0.0 * logits.sum(axis=-1)


def test_train_and_eval_steps_pass_the_optimizer_step_to_a_step_taking_loss():
    fns = steps.make_step_functions(losses.get_loss("test_step_echo"), steps.normalize_images)
    state, batch, rng = _state(), _batch(n=4), jax.random.key(0)
    loss_sums = []
    for _ in range(3):
        state, metrics = fns.train_step(state, batch, rng)
        loss_sums.append(float(metrics["loss"]))
    assert loss_sums == [0.0, 4.0, 8.0]  # steps 0, 1, 2; four examples each
    assert int(state.step) == 3
    assert float(fns.eval_step(state, batch)["loss"]) == 12.0


def test_ema_parameters_follow_the_exponential_average():
    config = default.get_config()
    config.model = "mlp"
    model = models.create_model(config, num_classes=10)
    state = create_train_state(model, IMAGE_SHAPE, optax.sgd(0.1), jax.random.key(0), 0.9)
    start = state.params
    state, _ = _train_step()(state, _batch(), jax.random.key(1))
    expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, start, state.params)
    chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-6)
    assert state.variables()["params"] is state.ema_params  # inference uses the average


def test_ema_run_evaluates_with_the_average(tiny_config, tmp_path):
    tiny_config.ema_decay = 0.9
    metrics = trainer.train_and_evaluate(tiny_config, tmp_path / "run")
    run = flaxmnist.load_run(tmp_path / "run")
    assert run.state.ema_params is not None
    assert metrics["test_accuracy"] >= 0.8


def test_shifted_views_move_pixels_and_fill_with_black():
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)
    views = np.asarray(steps.shifted_views(jnp.asarray(image), 1))[:, 0, :, :, 0]
    expected = [
        [[1, 2, 3], [4, 5, 6], [7, 8, 9]],  # unchanged
        [[0, 0, 0], [1, 2, 3], [4, 5, 6]],  # down
        [[4, 5, 6], [7, 8, 9], [0, 0, 0]],  # up
        [[0, 1, 2], [0, 4, 5], [0, 7, 8]],  # right
        [[2, 3, 0], [5, 6, 0], [8, 9, 0]],  # left
    ]
    np.testing.assert_array_equal(views, np.array(expected))


def test_tta_averages_the_softmax_over_the_shifted_views():
    state, images = _state("cnn_simple"), _batch(4)["image"]
    plain = steps.predict_step(state, images, preprocess=steps.normalize_images)
    chex.assert_trees_all_close(
        steps.predict_step(state, images, preprocess=steps.normalize_images, tta_shift=0), plain
    )
    tta = steps.predict_step(state, images, preprocess=steps.normalize_images, tta_shift=2)
    views = steps.shifted_views(jnp.asarray(images), 2)
    probabilities = np.mean(
        [
            jax.nn.softmax(steps.predict_step(state, view, preprocess=steps.normalize_images))
            for view in views
        ],
        axis=0,
    )
    chex.assert_trees_all_close(np.exp(tta), probabilities, atol=1e-6)
    chex.assert_trees_all_close(np.exp(tta).sum(-1), np.ones(4), atol=1e-6)


def test_tta_run_predicts_with_tta(tiny_config, tmp_path):
    tiny_config.tta_shift = 1
    metrics = trainer.train_and_evaluate(tiny_config, tmp_path / "run")
    run = flaxmnist.load_run(tmp_path / "run")
    test = datasets.load_dataset("mnist", tiny_config.data_dir).test
    log_probs = run.predict(test.images)
    chex.assert_trees_all_close(np.exp(log_probs).sum(-1), np.ones(len(test)), atol=1e-5)
    assert np.mean(log_probs.argmax(-1) == test.labels) == metrics["test_accuracy"]
