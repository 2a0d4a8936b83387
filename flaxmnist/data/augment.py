"""On-device data augmentation: the Keras ``ImageDataGenerator`` set as pure, batched JAX ops.

:func:`augment_batch` draws, per image, a random rotation, zoom, shear and translation (one affine
map, resampled bilinearly), an optional horizontal flip (off by default: wrong for digits) and an
optional cutout square. It runs inside the jitted ``train_step``, keyed by the step's rng, so it
costs no host work and is reproducible. All strengths at zero is the identity.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections

from flaxmnist.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (0 disables each)."""

    rotation: float = 0.0  # max degrees either way
    translate: float = 0.0  # max shift as a fraction of the image size
    zoom: float = 0.0  # scale drawn from [1 - zoom, 1 + zoom]
    shear: float = 0.0  # max shear angle in degrees
    flip: bool = False  # random horizontal flips
    cutout: int = 0  # side of the square erased (set to the background), in pixels
    cutout_prob: float = 0.5  # chance that an image gets a cutout

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        return bool(
            self.rotation or self.translate or self.zoom or self.shear or self.flip or self.cutout
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> AugmentConfig:
        """Reads ``config.augment``; negative strengths are rejected."""
        values = dict(config.augment)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown augment fields: {', '.join(sorted(unknown))}")
        negative = [k for k, v in values.items() if not isinstance(v, bool) and v < 0]
        if negative:
            raise ConfigError(f"augment strengths must be >= 0: {', '.join(negative)}")
        return cls(**values)


def _affine_matrices(key: jax.Array, batch: int, cfg: AugmentConfig) -> jax.Array:
    """Per-image 2x2 matrices mapping output offsets to input offsets, and shifts [B, 2]."""
    k_rot, k_zoom, k_shear, k_shift, k_flip = jax.random.split(key, 5)
    angle = jnp.deg2rad(cfg.rotation) * jax.random.uniform(k_rot, (batch,), minval=-1, maxval=1)
    shear = jnp.deg2rad(cfg.shear) * jax.random.uniform(k_shear, (batch,), minval=-1, maxval=1)
    scale = 1.0 + cfg.zoom * jax.random.uniform(k_zoom, (batch, 2), minval=-1, maxval=1)
    flip = jnp.where(cfg.flip & jax.random.bernoulli(k_flip, 0.5, (batch,)), -1.0, 1.0)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    shearing = jnp.stack(
        [
            jnp.stack([jnp.ones_like(shear), -jnp.sin(shear)], -1),
            jnp.stack([jnp.zeros_like(shear), jnp.cos(shear)], -1),
        ],
        -2,
    )
    scaling = jax.vmap(jnp.diag)(jnp.stack([scale[:, 0], scale[:, 1] * flip], -1))
    matrices = rotation @ shearing @ scaling
    shifts = cfg.translate * jax.random.uniform(k_shift, (batch, 2), minval=-1, maxval=1)
    return matrices, shifts


def _resample(image: jax.Array, matrix: jax.Array, shift: jax.Array, fill: float) -> jax.Array:
    """Bilinear resampling of one [H, W, C] image under an affine map about its centre."""
    h, w, _ = image.shape
    center = jnp.array([(h - 1) / 2, (w - 1) / 2])
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    offsets = jnp.stack([rows.ravel(), cols.ravel()]) - center[:, None]
    source = matrix @ offsets + center[:, None] - shift[:, None] * jnp.array([[h], [w]])
    sample = functools.partial(
        jax.scipy.ndimage.map_coordinates,
        coordinates=[source[0], source[1]],
        order=1,
        mode="constant",
        cval=fill,
    )
    channels = jax.vmap(sample, in_axes=-1, out_axes=-1)(image)
    return channels.reshape(h, w, -1)


def _cutout(images: jax.Array, key: jax.Array, cfg: AugmentConfig, fill: float) -> jax.Array:
    """Sets a random ``cutout``-pixel square of some images to ``fill``."""
    batch, h, w, _ = images.shape
    k_apply, k_row, k_col = jax.random.split(key, 3)
    apply = jax.random.bernoulli(k_apply, cfg.cutout_prob, (batch, 1, 1, 1))
    top = jax.random.randint(k_row, (batch, 1, 1, 1), 0, max(h - cfg.cutout, 0) + 1)
    left = jax.random.randint(k_col, (batch, 1, 1, 1), 0, max(w - cfg.cutout, 0) + 1)
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    inside = (rows >= top) & (rows < top + cfg.cutout) & (cols >= left) & (cols < left + cfg.cutout)
    return jnp.where(apply & inside, fill, images)


def augment_batch(
    images: jax.Array, key: jax.Array, cfg: AugmentConfig, *, fill: float = 0.0
) -> jax.Array:
    """Augments float images [B, H, W, C]; ``fill`` is the background value outside the image."""
    if not cfg.enabled:
        return images
    k_affine, k_cutout = jax.random.split(key)
    if cfg.rotation or cfg.translate or cfg.zoom or cfg.shear or cfg.flip:
        matrices, shifts = _affine_matrices(k_affine, images.shape[0], cfg)
        resample = functools.partial(_resample, fill=fill)
        images = jax.vmap(resample)(images, matrices, shifts).astype(images.dtype)
    if cfg.cutout:
        images = _cutout(images, k_cutout, cfg, fill)
    return images
