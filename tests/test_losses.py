import math

import chex
import jax.numpy as jnp
import pytest

from flaxmnist import losses
from flaxmnist.errors import ConfigError

# Two examples, three classes; softmax of [0, ln 2, ln 5] is [1/8, 2/8, 5/8].
LOGITS = jnp.array([[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0]])
LABELS = jnp.array([2, 0])


def test_cross_entropy_matches_hand_computation():
    expected = jnp.array([-math.log(5 / 8), math.log(3.0)])
    chex.assert_trees_all_close(losses.cross_entropy(LOGITS, LABELS), expected, atol=1e-6)


def test_categorical_equals_sparse_without_smoothing():
    chex.assert_trees_all_close(
        losses.categorical_cross_entropy(LOGITS, LABELS),
        losses.cross_entropy(LOGITS, LABELS),
        atol=1e-6,
    )


def test_label_smoothing_matches_hand_computation():
    # s = 0.3, K = 3: target for example 0 is [0.1, 0.1, 0.8].
    log_p = [math.log(1 / 8), math.log(2 / 8), math.log(5 / 8)]
    expected0 = -(0.1 * log_p[0] + 0.1 * log_p[1] + 0.8 * log_p[2])
    got = losses.label_smoothed_cross_entropy(LOGITS, LABELS, smoothing=0.3)
    assert got.shape == (2,)
    assert got[0] == pytest.approx(expected0, rel=1e-6)
    assert got[1] == pytest.approx(math.log(3.0), rel=1e-6)  # uniform logits: any target


def test_registry_resolves_names_and_binds_options():
    loss = losses.get_loss("label_smoothing", "smoothing=0.3")
    chex.assert_trees_all_close(
        loss(LOGITS, LABELS),
        losses.label_smoothed_cross_entropy(LOGITS, LABELS, smoothing=0.3),
    )


def test_custom_loss_registers_from_outside_the_package():
    @losses.register("test_double_ce")
    def double(logits, labels, *, factor=2.0):
        return factor * losses.cross_entropy(logits, labels)

    loss = losses.get_loss("test_double_ce", "factor=3")
    chex.assert_trees_all_close(loss(LOGITS, LABELS), 3 * losses.cross_entropy(LOGITS, LABELS))


def test_get_loss_passes_the_step_only_to_losses_that_declare_it():
    seen = []

    @losses.register("test_records_step")
    def records_step(logits, labels, *, step, scale=1.0):
        seen.append(step)
        return scale * losses.cross_entropy(logits, labels)

    scheduled = losses.get_loss("test_records_step", "scale=2.0")
    plain = losses.get_loss("cross_entropy")  # declares no step: must accept and drop it
    step = jnp.array(7, jnp.int32)
    chex.assert_trees_all_close(
        scheduled(LOGITS, LABELS, step=step), 2 * losses.cross_entropy(LOGITS, LABELS)
    )
    assert seen[-1] is step
    scheduled(LOGITS, LABELS)
    assert seen[-1] == 0  # the default step
    chex.assert_trees_all_close(
        plain(LOGITS, LABELS, step=step), losses.cross_entropy(LOGITS, LABELS)
    )


def test_step_is_not_a_loss_option():
    with pytest.raises(ConfigError, match="'step' is the optimizer step"):
        losses.get_loss("label_smoothing", "step=3")


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown loss 'hinge2'; valid: .*cross_entropy"):
        losses.get_loss("hinge2")


def test_unknown_option_is_rejected_up_front():
    with pytest.raises(ConfigError, match="rejects options"):
        losses.get_loss("cross_entropy", "gamma=2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", {}), ("a=1, b=0.5", {"a": 1, "b": 0.5}), ("mode=hard", {"mode": "hard"})],
)
def test_parse_options(text, expected):
    assert losses.parse_options(text) == expected


def test_parse_options_rejects_malformed_items():
    with pytest.raises(ConfigError, match="expected name=value"):
        losses.parse_options("gamma")
