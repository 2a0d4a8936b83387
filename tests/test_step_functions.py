import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flaxmnist
from flaxmnist import losses, models
from flaxmnist.configs import default
from flaxmnist.data import datasets
from flaxmnist.training import loop, step_functions
from flaxmnist.training.train_state import create_train_state

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
            step_functions.train_step,
            loss_fn=CROSS_ENTROPY,
            preprocess=step_functions.normalize_images,
        )
    )


def test_normalize_images():
    images = jnp.array([0, 51, 255], jnp.uint8)
    chex.assert_trees_all_close(step_functions.normalize_images(images), jnp.array([0.0, 0.2, 1.0]))
    chex.assert_trees_all_close(
        step_functions.normalize_images(images, mean=0.2, std=0.5),
        jnp.array([-0.4, 0.0, 1.6]),
        atol=1e-6,
    )


def test_metric_sums_respect_the_mask():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    per_example = jnp.array([0.5, 1.5, 4.0])
    sums = step_functions.metric_sums(logits, labels, per_example, mask=jnp.array([1.0, 1.0, 0.0]))
    chex.assert_trees_all_close(sums, {"loss": 2.0, "correct": 1.0, "count": 2.0})


# Dropout (an rng per step) and BatchNorm (batch_stats carried through the donated state).
@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mlp_dropout", "convnet_small"])
def test_package_steps_reduce_the_loss_donate_the_state_and_compile_once(model_name):
    traces = []

    def counting_loss(logits, labels, *, step=0):
        traces.append(step)  # a Python side effect: runs only while jax traces the step
        return CROSS_ENTROPY(logits, labels, step=step)

    fns = step_functions.make_step_functions(counting_loss, step_functions.normalize_images)
    state, batch, rng = _state(model_name), _batch(), jax.random.key(1)
    first = None
    for _ in range(15):
        state, metrics = fns.train_step(state, batch, rng)  # the package's jitted, donated step
        first = metrics["loss"] if first is None else first
    assert int(state.step) == 15
    assert float(metrics["loss"]) < 0.5 * float(first)
    assert float(metrics["count"]) == 16
    for seed in (1, 2, 3):  # fresh batches (new host arrays) of the same shape
        given = state
        state, _ = fns.train_step(state, _batch(seed=seed), rng)
        assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(given.params))
    assert len(traces) == 1
    assert fns.train_step._cache_size() == 1
    for seed in (4, 5, 6):
        fns.eval_step(state, _batch(seed=seed))
    assert len(traces) == 2  # one more trace, for the eval step, whatever the batch
    assert fns.eval_step._cache_size() == 1


class _DropoutOfOnes(nn.Module):
    """Logits ``dropout(w)`` with ``w`` = 1: with one example, d loss / d w is the dropout mask.

    With the loss ``sum(logits)`` and SGD at learning rate 1, ``w`` moves by ``-mask / keep``
    each step, so the parameters record the mask every training step used.
    """

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.ones, (32,))
        logits = jnp.broadcast_to(w, (x.shape[0], 32))
        return nn.Dropout(0.5, deterministic=not train)(logits)


def _sum_of_logits(logits, labels, *, step=0):
    return logits.sum(axis=-1)


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)  # the train step donates its input state


def test_train_step_draws_a_new_dropout_mask_each_step_and_the_same_one_for_the_same_step():
    model = _DropoutOfOnes()
    start = create_train_state(model, IMAGE_SHAPE, optax.sgd(1.0), jax.random.key(0))
    fns = step_functions.make_step_functions(_sum_of_logits, step_functions.normalize_images)
    batch, rng = _batch(n=1), jax.random.key(1)

    def mask_of_one_step(state):
        before = np.asarray(state.params["w"])
        after, _ = fns.train_step(_copy(state), batch, rng)
        return (before - np.asarray(after.params["w"])) * 0.5  # 1 kept, 0 dropped

    step0 = mask_of_one_step(start)
    after0, _ = fns.train_step(_copy(start), batch, rng)
    step1 = mask_of_one_step(after0)
    assert set(np.unique(step0)) == {0.0, 1.0} and set(np.unique(step1)) == {0.0, 1.0}
    assert not np.array_equal(step0, step1)  # same batch, same rng: a new mask for step 1
    np.testing.assert_array_equal(mask_of_one_step(start), step0)  # step 0 again: same mask
    # The mask depends on the step number, not on the parameters: step 1 from the start params.
    np.testing.assert_array_equal(mask_of_one_step(start.replace(step=after0.step)), step1)
    # The documented key: fold_in(rng, step).
    for step, mask in ((0, step0), (1, step1)):
        dropped = model.apply(
            start.variables(),
            jnp.zeros((1, *IMAGE_SHAPE)),
            train=True,
            rngs={"dropout": jax.random.fold_in(rng, step)},
        )
        np.testing.assert_array_equal(np.asarray(dropped[0]) * 0.5, mask)


@pytest.mark.slow
def test_scanned_training_equals_sequential_train_steps():
    fns = step_functions.make_step_functions(CROSS_ENTROPY, step_functions.normalize_images)
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


@pytest.mark.slow
def test_evaluation_of_padded_batches_counts_every_example_once():
    fns = step_functions.make_step_functions(CROSS_ENTROPY, step_functions.normalize_images)
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
    fns = step_functions.make_step_functions(
        losses.get_loss("test_step_echo"), step_functions.normalize_images
    )
    state, batch, rng = _state(), _batch(n=4), jax.random.key(0)
    loss_sums = []
    for _ in range(3):
        state, metrics = fns.train_step(state, batch, rng)
        loss_sums.append(float(metrics["loss"]))
    assert loss_sums == [0.0, 4.0, 8.0]  # steps 0, 1, 2; four examples each
    assert int(state.step) == 3
    assert float(fns.eval_step(state, batch)["loss"]) == 12.0


class _ConstantLogits(nn.Module):
    """Logits ``w`` (starting at [1, 2]) for every example, whatever the image."""

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", lambda key: jnp.array([1.0, 2.0]))
        return jnp.broadcast_to(w, (x.shape[0], 2))


def _ema_state(learning_rate=0.5, ema_decay=0.9):
    tx = optax.sgd(learning_rate)
    return create_train_state(_ConstantLogits(), IMAGE_SHAPE, tx, jax.random.key(0), ema_decay)


def test_update_ema_is_decay_times_ema_plus_one_minus_decay_times_params():
    state = _ema_state(ema_decay=0.9).replace(
        params={"w": jnp.array([1.0, 2.0])}, ema_params={"w": jnp.array([0.0, 10.0])}
    )
    # 0.9 * 0 + 0.1 * 1 = 0.1; 0.9 * 10 + 0.1 * 2 = 9.2
    chex.assert_trees_all_close(state.update_ema().ema_params, {"w": jnp.array([0.1, 9.2])})
    chex.assert_trees_all_close(state.update_ema().params, state.params)  # params untouched
    plain = _ema_state(ema_decay=0.0)
    assert plain.ema_params is None and plain.update_ema() is plain


def test_train_step_updates_the_ema_by_hand_computed_numbers_and_trains_the_live_params():
    # Loss sum(w) per example: the gradient is [1, 1]; SGD at 0.5 moves w by -0.5 each step.
    fns = step_functions.make_step_functions(_sum_of_logits, step_functions.normalize_images)
    state, batch, rng = _ema_state(), _batch(n=4), jax.random.key(1)
    chex.assert_trees_all_close(state.ema_params, {"w": jnp.array([1.0, 2.0])})  # starts at w
    state, first = fns.train_step(state, batch, rng)
    chex.assert_trees_all_close(state.params, {"w": jnp.array([0.5, 1.5])})
    # 0.9 * [1, 2] + 0.1 * [0.5, 1.5]
    chex.assert_trees_all_close(state.ema_params, {"w": jnp.array([0.95, 1.95])}, rtol=1e-6)
    state, second = fns.train_step(state, batch, rng)
    chex.assert_trees_all_close(state.params, {"w": jnp.array([0.0, 1.0])})
    # 0.9 * [0.95, 1.95] + 0.1 * [0, 1]
    chex.assert_trees_all_close(state.ema_params, {"w": jnp.array([0.855, 1.855])}, rtol=1e-6)
    # The forward pass of training used the live params: sum(w) = 3, then 2 (EMA: 2.9), x 4.
    assert float(first["loss"]) == pytest.approx(12.0)
    assert float(second["loss"]) == pytest.approx(8.0)


def test_eval_and_predict_steps_use_the_ema_params_when_kept():
    fns = step_functions.make_step_functions(_sum_of_logits, step_functions.normalize_images)
    batch = {**_batch(n=4), "label": np.zeros(4, np.int32)}
    live = {"w": jnp.array([1.0, 2.0])}  # predicts class 1, loss 3 per example
    ema = {"w": jnp.array([3.0, -1.0])}  # predicts class 0, loss 2 per example
    state = _ema_state().replace(params=live, ema_params=ema)
    chex.assert_trees_all_close(fns.predict_step(state, batch["image"]), jnp.tile(ema["w"], (4, 1)))
    chex.assert_trees_all_close(
        fns.eval_step(state, batch), {"loss": 8.0, "correct": 4.0, "count": 4.0}
    )
    stacked = jax.tree_util.tree_map(lambda x: x.reshape(2, 2, *x.shape[1:]), batch)
    chex.assert_trees_all_close(
        fns.evaluate_batches(state, stacked), {"loss": 8.0, "correct": 4.0, "count": 4.0}
    )
    # Without an EMA the same steps evaluate the live params.
    no_ema = _ema_state(ema_decay=0.0).replace(params=live)
    chex.assert_trees_all_close(
        fns.eval_step(no_ema, batch), {"loss": 12.0, "correct": 0.0, "count": 4.0}
    )


@pytest.mark.slow
def test_ema_run_reports_test_metrics_of_the_average(tiny_config, tmp_path):
    tiny_config.ema_decay = 0.9
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    run = flaxmnist.load_run(tmp_path / "run")
    test = datasets.load_dataset("mnist", tiny_config.data_dir).test
    assert metrics["test_accuracy"] >= 0.8

    def test_loss(state):
        logits = step_functions.predict_step(
            state, test.images, preprocess=step_functions.normalize_images
        )
        return float(losses.cross_entropy(logits, test.labels).mean())

    ema_loss, live_loss = test_loss(run.state), test_loss(run.state.replace(ema_params=None))
    assert metrics["test_loss"] == pytest.approx(ema_loss, rel=1e-4)
    assert abs(ema_loss - live_loss) > 1e-3  # the live params would have reported another loss


def test_shifted_views_move_pixels_and_fill_with_black():
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)
    views = np.asarray(step_functions.shifted_views(jnp.asarray(image), 1))[:, 0, :, :, 0]
    expected = [
        [[1, 2, 3], [4, 5, 6], [7, 8, 9]],  # unchanged
        [[0, 0, 0], [1, 2, 3], [4, 5, 6]],  # down
        [[4, 5, 6], [7, 8, 9], [0, 0, 0]],  # up
        [[0, 1, 2], [0, 4, 5], [0, 7, 8]],  # right
        [[2, 3, 0], [5, 6, 0], [8, 9, 0]],  # left
    ]
    np.testing.assert_array_equal(views, np.array(expected))


@pytest.mark.slow
def test_tta_averages_the_softmax_over_the_shifted_views():
    state, images = _state("cnn_simple"), _batch(4)["image"]
    plain = step_functions.predict_step(state, images, preprocess=step_functions.normalize_images)
    chex.assert_trees_all_close(
        step_functions.predict_step(
            state, images, preprocess=step_functions.normalize_images, tta_shift=0
        ),
        plain,
    )
    tta = step_functions.predict_step(
        state, images, preprocess=step_functions.normalize_images, tta_shift=2
    )
    views = step_functions.shifted_views(jnp.asarray(images), 2)
    probabilities = np.mean(
        [
            jax.nn.softmax(
                step_functions.predict_step(state, view, preprocess=step_functions.normalize_images)
            )
            for view in views
        ],
        axis=0,
    )
    chex.assert_trees_all_close(np.exp(tta), probabilities, atol=1e-6)
    chex.assert_trees_all_close(np.exp(tta).sum(-1), np.ones(4), atol=1e-6)


@pytest.mark.slow
def test_tta_run_predicts_with_tta(tiny_config, tmp_path):
    tiny_config.tta_shift = 1
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    run = flaxmnist.load_run(tmp_path / "run")
    test = datasets.load_dataset("mnist", tiny_config.data_dir).test
    log_probs = run.predict(test.images)
    chex.assert_trees_all_close(np.exp(log_probs).sum(-1), np.ones(len(test)), atol=1e-5)
    assert np.mean(log_probs.argmax(-1) == test.labels) == metrics["test_accuracy"]
