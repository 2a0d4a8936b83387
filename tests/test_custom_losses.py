import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO_ROOT

from flaxmnist import losses, plugins
from flaxmnist.errors import ConfigError

# softmax([0, ln 2, ln 5]) = [1/8, 2/8, 5/8], so every log-probability is known by hand.
LOGITS = jnp.array([[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0]])
LOG_P = np.log([[1 / 8, 2 / 8, 5 / 8], [1 / 3, 1 / 3, 1 / 3]])


@pytest.fixture(scope="module")
def registered():
    plugins.import_modules(str(REPO_ROOT / "experiments" / "custom_losses.py"))
    return losses.get_loss


def test_focal_loss_matches_hand_computation(registered):
    logits = jnp.array([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    labels = jnp.array([1])
    expected = -((1 - 0.75) ** 2) * math.log(0.75)
    chex.assert_trees_all_close(
        registered("focal", "gamma=2.0")(logits, labels), jnp.array([expected])
    )


def test_focal_loss_with_gamma_zero_is_cross_entropy(registered):
    logits = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.3, 0.2]])
    labels = jnp.array([2, 1])
    chex.assert_trees_all_close(
        registered("focal", "gamma=0")(logits, labels),
        losses.cross_entropy(logits, labels),
        atol=1e-6,
    )


def test_import_modules_reports_missing_files_and_modules():
    with pytest.raises(ConfigError, match="no such file"):
        plugins.import_modules("experiments/nope.py")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        plugins.import_modules("no_such_module_xyz")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def broken(:\n", r"failed: SyntaxError at .*bad_plugin\.py:1: invalid syntax"),
        ("x = 1\nraise RuntimeError('boom')\n", r"RuntimeError at .*bad_plugin\.py:2: boom"),
        ("import no_such_module_xyz\n", r"failed: ModuleNotFoundError at .*bad_plugin\.py:1"),
    ],
)
def test_a_plugin_that_fails_to_load_is_a_one_line_config_error_and_is_not_kept(
    tmp_path, source, message
):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    with pytest.raises(ConfigError, match=message):
        plugins.import_modules(str(plugin))
    plugin.write_text("LOADED = True\n")  # fixed: the next import runs the file again
    (module,) = plugins.import_modules(str(plugin))
    assert module.LOADED


def test_hinge_loss_matches_hand_computation(registered):
    logits = jnp.array([[2.0, 1.5, -1.0], [3.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 0, 2])
    # margin 1: 1 + 1.5 - 2 = 0.5; 1 + 0.5 - 3 < 0 -> 0; 1 + 0 - 0 = 1.
    chex.assert_trees_all_close(
        registered("hinge", "margin=1.0")(logits, labels), jnp.array([0.5, 0.0, 1.0])
    )


def test_focal_loss_on_three_classes_matches_hand_computation(registered):
    labels = jnp.array([1, 0])  # p_true = 1/4 and 1/3
    expected = [-(1 - 1 / 4) * math.log(1 / 4), -(1 - 1 / 3) * math.log(1 / 3)]  # gamma 1
    chex.assert_trees_all_close(
        registered("focal", "gamma=1.0")(LOGITS, labels), jnp.array(expected), rtol=1e-6
    )


def test_hinge_loss_with_a_wider_margin_ignores_the_step(registered):
    logits = jnp.array([[2.0, 1.5, -1.0], [0.0, 3.0, 0.5]])
    labels = jnp.array([1, 1])
    # margin 2: 2 + 2 - 1.5 = 2.5; 2 + 0.5 - 3 < 0 -> 0.
    chex.assert_trees_all_close(
        registered("hinge", "margin=2.0")(logits, labels, step=jnp.int32(100)),
        jnp.array([2.5, 0.0]),
    )


@pytest.mark.parametrize(
    ("step", "smoothing"),
    [(0, 0.3), (2, 0.24), (5, 0.15), (10, 0.0), (25, 0.0)],  # start, linear, at `steps`, after
)
def test_scheduled_smoothing_anneals_linearly_then_holds(registered, step, smoothing):
    loss = registered("scheduled_smoothing", "start=0.3,end=0.0,steps=10")
    labels = jnp.array([2, 0])
    targets = np.array([[0, 0, 1], [1, 0, 0]]) * (1 - smoothing) + smoothing / 3
    expected = -(targets * LOG_P).sum(axis=-1)  # the second example is ln 3 at any smoothing
    got = jax.jit(lambda s: loss(LOGITS, labels, step=s))(jnp.int32(step))  # traced step
    chex.assert_trees_all_close(got, jnp.asarray(expected, jnp.float32), rtol=1e-6)


def test_scheduled_smoothing_can_also_increase(registered):
    loss = registered("scheduled_smoothing", "start=0.0,end=0.6,steps=4")
    # step 1 of 4: smoothing 0.15, target [0.05, 0.05, 0.9] for class 2.
    expected = -(0.05 * math.log(1 / 8) + 0.05 * math.log(2 / 8) + 0.9 * math.log(5 / 8))
    chex.assert_trees_all_close(
        loss(LOGITS[:1], jnp.array([2]), step=jnp.int32(1)), jnp.array([expected]), rtol=1e-6
    )


def test_scheduled_smoothing_defaults_and_bad_steps(registered):
    loss = registered("scheduled_smoothing")  # start 0.2, end 0.0 over 2000 steps
    step_0 = -(0.2 / 3 * LOG_P[0, 0] + 0.2 / 3 * LOG_P[0, 1] + (0.8 + 0.2 / 3) * LOG_P[0, 2])
    chex.assert_trees_all_close(loss(LOGITS[:1], jnp.array([2])), jnp.array([step_0]), rtol=1e-6)
    chex.assert_trees_all_close(
        loss(LOGITS[:1], jnp.array([2]), step=jnp.int32(2000)),
        jnp.array([-math.log(5 / 8)]),
        rtol=1e-6,
    )
    with pytest.raises(ConfigError, match="steps must be positive"):
        registered("scheduled_smoothing", "steps=0")


def test_two_plugins_with_one_file_name_in_two_folders_are_two_modules(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "losses_mine.py").write_text(f"FOLDER = {folder!r}\n")
    first, second = plugins.import_modules(
        f"{tmp_path / 'a' / 'losses_mine.py'},{tmp_path / 'b' / 'losses_mine.py'}"
    )
    assert (first.FOLDER, second.FOLDER) == ("a", "b")
