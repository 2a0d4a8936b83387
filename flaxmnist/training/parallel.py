"""Data parallelism with ``jax.sharding``: a 1-D ``Mesh`` over a ``data`` axis, on 1..N processes.

The global batch is split over the ``data`` axis; the train state is replicated. ``jax.jit``
partitions ``train_step`` from these shardings, so the same step function runs on one device or
many: gradient means and BatchNorm batch statistics are taken over the global batch, with the
collectives inserted by XLA (no ``pmap``, no hand-written ``psum``).

Several processes (hosts) join one run through ``jax.distributed``: every process runs the same
program, holds the rows of each global batch that its own devices take, and assembles global
arrays with ``jax.make_array_from_process_local_data``. Only the primary process (index 0) writes
files; every process takes part in Orbax saves and restores.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxmnist import config_schema
from flaxmnist.errors import ConfigError, FlaxmnistError

DATA_AXIS = "data"
# Launchers that start one process per host and tell it so (JAX auto-detects the rest).
CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def multihost_requested(settings: ml_collections.ConfigDict) -> bool:
    """Whether this process should join a multi-process run (``config.multihost``)."""
    config_schema.check("multihost.enabled", settings.enabled)
    if settings.enabled != "auto":
        return settings.enabled == "on"
    launched = any(_env_int(name, 1) > 1 for name in CLUSTER_SIZE_VARIABLES)
    return bool(
        settings.coordinator_address
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
        or settings.num_processes > 1
        or launched
    )


def initialize_multihost(settings: ml_collections.ConfigDict) -> None:
    """Calls ``jax.distributed.initialize`` when requested; call before any JAX computation.

    Empty fields are left to JAX, which reads ``JAX_COORDINATOR_ADDRESS`` and detects Cloud TPU
    pods, SLURM and Open MPI; ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` fill the other two.
    """
    if not multihost_requested(settings):
        return
    config_schema.check("multihost.timeout_s", settings.timeout_s)
    num_processes = settings.num_processes or _env_int("JAX_NUM_PROCESSES", 0) or None
    process_id = settings.process_id if settings.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    address = settings.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if address and process_id is not None:
        # JAX aborts the whole process (no Python exception) when it cannot reach or start the
        # coordinator, so check first and fail with one line instead.
        check_coordinator(address, process_id, settings.timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over TCP
    jax.distributed.initialize(
        coordinator_address=address or None,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(settings.timeout_s),
    )


def _env_int(name: str, default: int | None = None) -> int | None:
    """The integer in environment variable ``name`` (``default`` when unset or empty)."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def check_coordinator(address: str, process_id: int, timeout_s: float) -> None:
    """Fails with one line when process 0 cannot serve ``address`` or others cannot reach it.

    Process 0 must be able to listen on the port; every other process waits up to ``timeout_s``
    for process 0 to accept connections there.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"multihost coordinator address must be HOST:PORT, got {address!r}")
    if process_id == 0:
        try:
            socket.create_server(("", int(port))).close()
        except OSError as error:
            raise FlaxmnistError(
                f"process 0 cannot serve the multihost coordinator on port {port}: "
                f"{error.strerror or error}"
            ) from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise FlaxmnistError(
                    f"no multihost coordinator answered at {address} within {timeout_s:g} s; "
                    "start process 0 first, or check the address and port"
                ) from None
            time.sleep(0.25)


def sync(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (a no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def create_mesh(num_devices: int = 0) -> Mesh:
    """A mesh over the first ``num_devices`` devices (0: all of them)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ConfigError(
            f"num_devices must be between 0 (all) and {len(devices)} here, got {num_devices}"
        )
    if jax.process_count() > 1 and num_devices not in (0, len(devices)):
        raise ConfigError(
            f"num_devices must be 0 (all {len(devices)} devices) when "
            f"{jax.process_count()} processes share the run, got {num_devices}"
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


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a ``global_rows``-row batch that this process's devices hold."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    bounds = [index[0].indices(global_rows)[:2] for index in index_map.values()]
    rows = slice(min(start for start, _ in bounds), max(stop for _, stop in bounds))
    if rows.stop - rows.start != global_rows // jax.process_count():
        raise ValueError(f"this process's devices do not hold contiguous rows: {index_map}")
    return rows


def put_local_batch(local_batch: Any, mesh: Mesh, leading_axes: int = 0) -> Any:
    """Assembles global batch arrays from each process's rows (see :func:`process_rows`)."""
    sharding = batch_sharding(mesh, leading_axes)
    return jax.tree_util.tree_map(
        lambda rows: jax.make_array_from_process_local_data(sharding, rows), local_batch
    )


def put_batch(batch: Any, mesh: Mesh, leading_axes: int = 0) -> Any:
    """Places a whole host batch (pytree of numpy arrays) split over the ``data`` axis.

    Every process passes the same ``batch``; each sends only its own rows to its devices.
    """
    rows = process_rows(mesh, jax.tree_util.tree_leaves(batch)[0].shape[leading_axes])
    index = (slice(None),) * leading_axes + (rows,)
    return put_local_batch(jax.tree_util.tree_map(lambda x: x[index], batch), mesh, leading_axes)
