"""Data parallelism with ``jax.sharding``: a 1-D ``Mesh`` over a ``data`` axis.

The global batch is split over the ``data`` axis; the train state is replicated. ``jax.jit``
partitions ``train_step`` from these shardings, so the same step function runs on one device or
many: gradient means and BatchNorm batch statistics are taken over the global batch, with the
collectives inserted by XLA (no ``pmap``, no hand-written ``psum``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxmnist.errors import ConfigError

DATA_AXIS = "data"


def create_mesh(num_devices: int = 0) -> Mesh:
    """A mesh over the first ``num_devices`` devices (0: all of them)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ConfigError(
            f"num_devices must be between 0 (all) and {len(devices)} here, got {num_devices}"
        )
    chosen = devices[: num_devices or len(devices)]
    return Mesh(np.array(chosen), (DATA_AXIS,))


def check_divisible(mesh: Mesh, **batch_sizes: int) -> None:
    """Each batch size must split evenly over the mesh's devices."""
    count = mesh.size
    for name, size in batch_sizes.items():
        if size % count:
            lower, upper = size - size % count, size + count - size % count
            raise ConfigError(
                f"{name} {size} does not split over {count} devices; use a multiple of "
                f"{count} (e.g. {lower or upper} or {upper})"
            )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (the train state, device-resident datasets)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Split along the batch axis, after ``leading_axes`` unsplit axes (e.g. a step axis)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), DATA_AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def put_batch(batch: Any, mesh: Mesh, leading_axes: int = 0) -> Any:
    """Places a host batch (pytree of numpy arrays) split over the ``data`` axis."""
    return jax.device_put(batch, batch_sharding(mesh, leading_axes))
