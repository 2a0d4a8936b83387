import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flaxmnist import augment
from flaxmnist.errors import ConfigError

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
    chex.assert_trees_all_equal(out, fn(IMAGES, jax.random.key(3)))
    assert not jnp.allclose(out, fn(IMAGES, jax.random.key(4)))


def test_translation_preserves_the_mass_of_an_interior_pixel():
    image = jnp.zeros((1, 10, 10, 1)).at[0, 5, 5, 0].set(1.0)
    cfg = augment.AugmentConfig(translate=0.3)
    out = augment.augment_batch(image, jax.random.key(7), cfg)
    # Bilinear resampling preserves the total mass of an interior pixel under a pure shift.
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)


def test_flip_mirrors_left_and_right():
    image = jnp.zeros((64, 4, 4, 1)).at[:, 1, 0, 0].set(1.0)
    out = augment.augment_batch(image, jax.random.key(2), augment.AugmentConfig(flip=True))
    flipped = np.asarray(out[:, 1, 3, 0]) == 1.0
    kept = np.asarray(out[:, 1, 0, 0]) == 1.0
    assert (flipped ^ kept).all() and 10 < flipped.sum() < 54  # about half flipped


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


def test_training_with_augmentation_runs_and_learns(tiny_config, tmp_path):
    from flaxmnist import trainer

    tiny_config.augment.update(rotation=10.0, translate=0.1, cutout=6)
    tiny_config.num_epochs = 3
    metrics = trainer.train_and_evaluate(tiny_config, tmp_path / "run")
    assert metrics["test_accuracy"] >= 0.8
