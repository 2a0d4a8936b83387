import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flaxmnist.configs import default
from flaxmnist.data import augment
from flaxmnist.errors import ConfigError
from flaxmnist.training import experiment

IMAGES = jax.random.uniform(jax.random.key(0), (6, 12, 10, 1))


def _augment(**strengths):
    cfg = augment.AugmentConfig(**strengths)
    return jax.jit(lambda x, k: augment.augment_batch(x, k, cfg, fill=-1.0))


def test_zero_strength_is_the_identity():
    chex.assert_trees_all_equal(_augment()(IMAGES, jax.random.key(1)), IMAGES)
    # The affine path with a vanishing rotation also reproduces every pixel.
    out = _augment(rotation=1e-9)(IMAGES, jax.random.key(1))
    chex.assert_trees_all_close(out, IMAGES, atol=1e-6)


@pytest.mark.parametrize(
    "strengths",
    [
        dict(rotation=20.0),
        dict(translate=0.2),
        dict(zoom=0.2),
        dict(shear=15.0),
        dict(flip=True),
        dict(cutout=4, cutout_prob=1.0),
    ],
)
def test_each_op_keeps_shape_and_range_and_is_deterministic(strengths):
    fn = _augment(**strengths)
    out = fn(IMAGES, jax.random.key(3))
    chex.assert_shape(out, IMAGES.shape)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0  # inputs in [0, 1], fill -1
    assert not jnp.allclose(out, IMAGES)  # the op changes the images
    chex.assert_trees_all_equal(out, fn(IMAGES, jax.random.key(3)))
    assert not jnp.allclose(out, fn(IMAGES, jax.random.key(4)))


@pytest.mark.slow
def test_translation_moves_an_interior_pixel_and_preserves_its_mass():
    image = jnp.zeros((1, 10, 10, 1)).at[0, 5, 5, 0].set(1.0)
    cfg = augment.AugmentConfig(translate=0.3)
    out = augment.augment_batch(image, jax.random.key(7), cfg)
    # Bilinear resampling preserves the total mass of an interior pixel under a pure shift.
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[0, 5, 5, 0]) < 0.5  # and the pixel has moved


def test_resampling_shifts_by_the_translation_and_splits_fractions_bilinearly():
    image = jnp.zeros((10, 10, 1)).at[5, 5, 0].set(1.0)
    identity = jnp.eye(2)
    # A shift of (0.1, 0.2) of the size is (1, 2) pixels: output (r, c) reads input (r-1, c-2).
    out = augment._resample(image, identity, jnp.array([0.1, 0.2]), fill=0.0)
    chex.assert_trees_all_close(out, jnp.zeros((10, 10, 1)).at[6, 7, 0].set(1.0), atol=1e-6)
    # Half a pixel down: the mass splits equally between rows 5 and 6.
    out = augment._resample(image, identity, jnp.array([0.05, 0.0]), fill=0.0)
    expected = jnp.zeros((10, 10, 1)).at[5, 5, 0].set(0.5).at[6, 5, 0].set(0.5)
    chex.assert_trees_all_close(out, expected, atol=1e-6)
    # A quarter turn about the centre (4.5, 4.5): input (5, 5) lands on output (5, 4).
    quarter = jnp.array([[0.0, -1.0], [1.0, 0.0]])  # output offset (dr, dc) reads (-dc, dr)
    out = augment._resample(image, quarter, jnp.zeros(2), fill=0.0)
    chex.assert_trees_all_close(out, jnp.zeros((10, 10, 1)).at[5, 4, 0].set(1.0), atol=1e-6)


@pytest.mark.slow
def test_flip_mirrors_left_and_right():
    image = jnp.zeros((64, 4, 4, 1)).at[:, 1, 0, 0].set(1.0)
    out = augment.augment_batch(image, jax.random.key(2), augment.AugmentConfig(flip=True))
    flipped = np.asarray(out[:, 1, 3, 0]) == 1.0
    kept = np.asarray(out[:, 1, 0, 0]) == 1.0
    assert (flipped ^ kept).all() and 10 < flipped.sum() < 54  # about half flipped


@pytest.mark.slow
def test_cutout_erases_a_square_of_the_given_size():
    out = augment.augment_batch(
        jnp.ones((3, 12, 12, 1)),
        jax.random.key(5),
        augment.AugmentConfig(cutout=4, cutout_prob=1.0),
        fill=0.0,
    )
    np.testing.assert_array_equal(np.asarray((out == 0).sum(axis=(1, 2, 3))), [16, 16, 16])


def test_config_validation():
    config = ml_collections.ConfigDict({"augment": {"rotation": -1.0}})
    with pytest.raises(ConfigError, match="must be >= 0: rotation"):
        augment.AugmentConfig.from_config(config)
    config = ml_collections.ConfigDict({"augment": {"spin": 1.0}})
    with pytest.raises(ConfigError, match="unknown augment fields: spin"):
        augment.AugmentConfig.from_config(config)


@pytest.mark.slow
def test_training_with_augmentation_runs_and_learns(tiny_config, tmp_path):
    from flaxmnist.training import loop

    tiny_config.augment.update(rotation=10.0, translate=0.1, cutout=6)
    tiny_config.num_epochs = 3
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert metrics["test_accuracy"] >= 0.8


class _PixelDot(nn.Module):
    """Logits [sum(w * image), 0]: with one example, d logit_0 / d w is the image the model saw."""

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.zeros, x.shape[1:])
        dot = jnp.sum(w * x, axis=(1, 2, 3))
        return jnp.stack([dot, jnp.zeros_like(dot)], axis=-1)


def _images_seen_by_train_steps(config, num_steps=1, mean=0.5, std=0.25):
    """What the model saw in each of ``num_steps`` train steps on one all-white 12x12 image."""
    from flaxmnist.training import step_functions
    from flaxmnist.training.train_state import create_train_state

    fns = step_functions.make_step_functions(
        lambda logits, labels, *, step=0: logits[:, 0],  # d loss / d w = the image
        functools.partial(step_functions.normalize_images, mean=mean, std=std),
        experiment.make_augment(config, mean, std),
    )
    state = create_train_state(_PixelDot(), (12, 12, 1), optax.sgd(1.0), jax.random.key(0))
    batch = {"image": np.full((1, 12, 12, 1), 255, np.uint8), "label": np.zeros(1, np.int32)}
    seen = []
    for _ in range(num_steps):
        before = np.asarray(state.params["w"])
        state, _ = fns.train_step(state, batch, jax.random.key(1))
        seen.append((before - np.asarray(state.params["w"]))[..., 0])  # SGD at lr 1: -grad
    return seen


def test_train_step_sees_raw_images_with_augmentation_off():
    (seen,) = _images_seen_by_train_steps(default.get_config())
    np.testing.assert_allclose(seen, np.full((12, 12), 2.0), rtol=1e-6)  # (1 - 0.5) / 0.25


def test_train_step_sees_the_configured_cutout_filled_with_black():
    config = default.get_config()
    config.augment.update(cutout=4, cutout_prob=1.0)
    first, second = _images_seen_by_train_steps(config, num_steps=2)
    for seen in (first, second):
        erased = np.isclose(seen, -2.0, rtol=1e-6)  # a black pixel, (0 - 0.5) / 0.25
        assert erased.sum() == 16 and np.isclose(seen[~erased], 2.0, rtol=1e-6).all()
        rows, cols = np.nonzero(erased)
        assert np.ptp(rows) == 3 and np.ptp(cols) == 3  # one 4x4 square
    assert not np.array_equal(first, second)  # a new square each step


@pytest.mark.slow
def test_train_step_sees_rotated_images():
    config = default.get_config()
    config.augment.rotation = 30.0
    (seen,) = _images_seen_by_train_steps(config)
    assert seen.min() < 1.99  # black from outside the image mixed into the corners
    assert seen[5:7, 5:7] == pytest.approx(2.0)  # the centre stays white
