"""Data parallelism over every device of every process: one mesh axis, 'data'.

The train state is replicated; each global batch is split along 'data'. Training stays a plain
`jax.jit` program over global arrays, and XLA inserts the gradient all-reduce, so there is no
`pmean` to get wrong. Random draws are made for the global batch with the partitionable threefry
generator (JAX's default), so they do not depend on how many devices share the batch: one seed
gives the same run on 1 device, 8 devices or 2 hosts, up to float rounding.

Several processes (hosts) are one program, as JAX's multi-controller runtime runs it: every
process runs the same code; `initialize_distributed` joins them first.

A population (K models stacked on axis 0 of every state leaf) adds a second mesh axis,
'members' (`population_mesh`): its members are split over gcd(K, D) groups of devices, and each
member's batch over the D / gcd(K, D) devices of its group.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MEMBERS_AXIS = "members"


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


def population_mesh(num_members: int, devices=None) -> Mesh:
    """A 2-D mesh ('members', 'data') of shape (gcd(K, D), D / gcd(K, D)) over D `devices`
    (default: all devices of all processes) for K = `num_members`.

    Each of the gcd(K, D) member groups trains K / gcd(K, D) whole members; within a group the
    D / gcd(K, D) devices split every batch of those members (the 'data' axis), so XLA
    all-reduces their gradients inside the group only. The largest member split that needs no
    padding: K a multiple of D gives every device K / D members and whole batches.
    """
    devices = list(jax.devices() if devices is None else devices)
    groups = math.gcd(num_members, len(devices))
    return jax.make_mesh(
        (groups, len(devices) // groups),
        (MEMBERS_AXIS, DATA_AXIS),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Splits axis 0 (the member axis) over the mesh's 'members' axis; replicated over 'data'."""
    return NamedSharding(mesh, PartitionSpec(MEMBERS_AXIS))


def put_members(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array with a member axis 0 -> the global array split by `member_sharding` (each
    process gives its own copy of the whole array and keeps the rows of its devices)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(
        array.shape, member_sharding(mesh), lambda index: array[index]
    )


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
    shutdown_timeout_seconds: int = 60,
    initialization_timeout_seconds: int = 300,
) -> None:
    """Joins this process to the others (`jax.distributed.initialize`).

    Arguments left None are read by JAX from its environment variables or cluster detection.
    On CPU, collectives go through gloo. A process that stops answering is declared dead after
    `heartbeat_timeout_seconds`, and the others then stop with an error instead of waiting forever
    in a collective; a process that finished waits at most `shutdown_timeout_seconds` for the
    others to finish too (JAX's default of 300 s would keep a failed run's survivors for minutes),
    and one waits `initialization_timeout_seconds` for all to join (on a cluster, processes can
    start minutes apart).
    """
    from vae_jax.errors import ProcessesError

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
            shutdown_timeout_seconds=shutdown_timeout_seconds,
            initialization_timeout=initialization_timeout_seconds,
        )
    except (RuntimeError, ValueError) as error:  # jaxlib's errors are RuntimeErrors
        reason = str(error).strip().splitlines()[0][:300].rstrip(".") if str(error).strip() else ""
        where = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or "the cluster"
        raise ProcessesError(
            f"could not join the other processes through {where}: {reason}; start every "
            "process with the same "
            "--coordinator_address and --num_processes and a distinct --process_id, and check "
            "that process 0's machine and port are reachable."
        ) from None


def code_version() -> str:
    """This process's code: the package version and a digest of its source and plugin files,
    so an edited checkout on one host is told apart from the others' release."""
    from vae_jax import __version__, plugins

    package = os.path.dirname(os.path.abspath(__file__))
    paths = sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True))
    paths += [spec for spec in plugins.imported() if os.path.isfile(spec)]
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, package).encode() + b"\0" + f.read())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _broadcast_text(text: str) -> str:
    """Process 0's `text`, in every process."""
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    padded = np.zeros(size, np.uint8)
    padded[: min(size, data.size)] = data[:size]
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode()


def check_processes_agree(config) -> None:
    """Refuses to start when the processes were given different configs or run different code:
    they would compile different programs and hang in their first collective, or train a
    model no single config describes.

    Raises:
      ProcessesError: in every process, naming the fields (or the code versions) that differ
        from process 0's.
    """
    from vae_jax.config import config_to_dict
    from vae_jax.errors import ProcessesError

    mine = json.dumps({"code": code_version(), "config": config_to_dict(config)}, sort_keys=True)
    digest = np.frombuffer(hashlib.sha256(mine.encode()).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differing = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if not differing:
        return
    first = json.loads(_broadcast_text(mine))
    here = json.loads(mine)
    others = ", ".join(str(i) for i in differing)
    if jax.process_index() not in differing:
        raise ProcessesError(
            f"process(es) {others} were started with a different config or code than process "
            "0 (their error lines name the difference); start every process with the same "
            "flags, config file, plugins and vae_jax version."
        )
    raise ProcessesError(
        f"process {jax.process_index()} differs from process 0: {differences(here, first)}; "
        "start every process with the same flags, config file, plugins and vae_jax version."
    )


def differences(here: dict, first: dict) -> str:
    """What differs between this process's `{"code", "config"}` and process 0's, in words."""
    words = [
        f"{name}={here['config'].get(name)!r} here but {first['config'].get(name)!r} on process 0"
        for name in sorted(set(here["config"]) | set(first["config"]))
        if here["config"].get(name) != first["config"].get(name)
    ]
    if here["code"] != first["code"]:
        words.append(f"vae_jax {here['code']} here but {first['code']} on process 0")
    return "; ".join(words)
