import math

import chex
import jax.numpy as jnp
import pytest
from conftest import REPO_ROOT

from flaxmnist import losses, plugins
from flaxmnist.errors import ConfigError


@pytest.fixture(scope="module")
def focal():
    plugins.import_modules(str(REPO_ROOT / "experiments" / "custom_losses.py"))
    return losses.get_loss


def test_focal_loss_matches_hand_computation(focal):
    logits = jnp.array([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    labels = jnp.array([1])
    expected = -((1 - 0.75) ** 2) * math.log(0.75)
    chex.assert_trees_all_close(focal("focal", "gamma=2.0")(logits, labels), jnp.array([expected]))


def test_focal_loss_with_gamma_zero_is_cross_entropy(focal):
    logits = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.3, 0.2]])
    labels = jnp.array([2, 1])
    chex.assert_trees_all_close(
        focal("focal", "gamma=0")(logits, labels),
        losses.cross_entropy(logits, labels),
        atol=1e-6,
    )


def test_import_modules_reports_missing_files_and_modules():
    with pytest.raises(ConfigError, match="no such file"):
        plugins.import_modules("experiments/nope.py")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        plugins.import_modules("no_such_module_xyz")
