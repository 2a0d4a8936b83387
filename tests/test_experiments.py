import math

import chex
import jax.numpy as jnp
import pytest
from conftest import REPO_ROOT

from flaxmnist import losses, plugins
from flaxmnist.errors import ConfigError


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


def test_hinge_loss_matches_hand_computation(registered):
    logits = jnp.array([[2.0, 1.5, -1.0], [3.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 0, 2])
    # margin 1: 1 + 1.5 - 2 = 0.5; 1 + 0.5 - 3 < 0 -> 0; 1 + 0 - 0 = 1.
    chex.assert_trees_all_close(
        registered("hinge", "margin=1.0")(logits, labels), jnp.array([0.5, 0.0, 1.0])
    )
