"""Data parallelism over every device of every process: one mesh axis, 'data'.

The train state is replicated; each global batch is split along 'data'. Training stays a plain
`jax.jit` program over global arrays, and XLA inserts the gradient all-reduce, so there is no
`pmean` to get wrong. Random draws are made for the global batch with the partitionable threefry
generator (JAX's default), so they do not depend on how many devices share the batch: one seed
gives the same run on 1 device, 8 devices or 2 hosts, up to float rounding.

Several processes (hosts) are one program, as JAX's multi-controller runtime runs it: every
process runs the same code; `initialize_distributed` joins them first.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Splits axis `leading_axes` (the batch axis) over the devices; earlier axes stay whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), DATA_AXIS))


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array copied to every device of every process (each process gives its own copy)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])


def put_process_batches(local: np.ndarray, mesh: Mesh, leading_axes: int) -> jax.Array:
    """This process's share of global batches -> the global array, split along the batch axis.

    `local` holds rows [i*B/P, (i+1)*B/P) of each global batch for process i of P (see
    `data.stream.StreamingLoader`); with one process it is the whole batch.
    """
    sharding = batch_sharding(mesh, leading_axes)
    global_shape = list(local.shape)
    global_shape[leading_axes] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def initialize_distributed(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    heartbeat_timeout_seconds: int = 10,
) -> None:
    """Joins this process to the others (`jax.distributed.initialize`).

    Arguments left None are read by JAX from its environment variables or cluster detection.
    On CPU, collectives go through gloo. A process that stops answering is declared dead after
    `heartbeat_timeout_seconds`, and the others then stop with an error instead of waiting forever
    in a collective.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
