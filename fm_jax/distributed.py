"""Data-parallel and multi-host training on JAX's own runtime: `jax.jit` over a `Mesh` (default) or `jax.pmap`.

The default is GSPMD: one `jax.jit`-compiled `train_step` whose batch is sharded over the mesh's `data` axis and
whose parameters and optimiser state are replicated (or, for large tensors, split over an optional `model` axis).
XLA inserts the gradient all-reduce. The `jax.pmap` variant runs the same step per device and averages loss,
metrics and gradients with `lax.pmean`.

Same global batch and key → same parameters on any device count. `jax.jit` with shardings computes the
single-device program, so any loss qualifies. Under `pmap` each device sees only its slice of the batch, so a
loss that draws one batch-shaped random array would draw different numbers on 1 and on 8 devices. Batches built
by `index_batch` carry each example's *global* index (`fm_jax.losses.Batch(x1, index=...)`), and
`fm_jax.flow_matching_loss` then keys example i by key_i = fold_in(key, index_i), which makes its randomness
independent of how the batch is split; with equal per-device batch sizes the pmean of per-device mean gradients
is the global mean gradient.

Multi-host: `initialize_from_env()` starts `jax.distributed` from environment variables; every process loads only
the rows `process_batch_rows(global_batch, mesh)` of each global batch, and `shard_batch` assembles the global
array with `jax.make_array_from_process_local_data`.

Mixed precision (bfloat16 compute, float32 parameters) wraps the model's `apply`: `fm_jax.models.mixed_precision`.

On a CPU host, `use_host_cores()` (before the first JAX operation) exposes one XLA device per core, so the same
data-parallel mesh keeps every core busy: XLA:CPU runs a U-Net step's convolutions on one thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._typing import Array, PyTree
from .losses import Batch
from .training import LossFn, TrainState, apply_gradients, train_step

DATA_AXIS = "data"
MODEL_AXIS = "model"

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "index_batch",
    "initialize_from_env",
    "make_mesh",
    "make_pmap_train_step",
    "make_sharded_train_step",
    "process_batch_rows",
    "replicate",
    "replicate_for_pmap",
    "shard_batch",
    "shard_state",
    "host_cores",
    "split_for_pmap",
    "state_sharding",
    "unreplicate",
    "use_host_cores",
]


# ----------------------------------------------------------------------------------------------------------------
# Multi-host start-up
# ----------------------------------------------------------------------------------------------------------------

def _launched_by_cluster(env) -> bool:
    """True under a multi-process launcher whose environment `jax.distributed.initialize()` reads by itself."""
    size = lambda name: int(env.get(name, "1") or 1)
    slurm = "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and size("SLURM_NTASKS") > 1  # inside `srun`
    ompi = size("OMPI_COMM_WORLD_SIZE") > 1
    tpu_gke = "," in env.get("TPU_WORKER_HOSTNAMES", "") or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))
    return slurm or ompi or tpu_gke


def initialize_from_env(
    environ: dict[str, str] | None = None, *, auto_detect: bool = False, **kwargs
) -> tuple[int, int]:
    """Start `jax.distributed` from environment variables; a no-op for a single process. Call before any JAX op.

    Read, first match wins:
      1. `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
         (`JAX_LOCAL_DEVICE_IDS` is read by JAX itself);
      2. the PyTorch-launcher names `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK` (torchrun, many GPU
         schedulers);
      3. a launcher JAX understands on its own — SLURM `srun` with more than one task, Open MPI `mpirun`, TPU
         pods on GKE — or `auto_detect=True` (Cloud TPU VM pod slices, found through the metadata server):
         `jax.distributed.initialize()` without arguments.
    With none of these (or a world size of 1) nothing is started.

    Args:
        environ: the environment to read (default `os.environ`). auto_detect: call `jax.distributed.initialize()`
            when no variables are set (it raises where JAX finds no cluster). kwargs: passed on to
            `jax.distributed.initialize` (e.g. `initialization_timeout`).
    Returns:
        (process_index, process_count) after start-up.
    """
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    address = num = pid = None
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        address, num, pid = env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"], env.get("JAX_PROCESS_ID")
        names = "JAX_NUM_PROCESSES / JAX_PROCESS_ID"
    elif env.get("MASTER_ADDR") and env.get("WORLD_SIZE"):
        address = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '1234')}"
        num, pid = env["WORLD_SIZE"], env.get("RANK")
        names = "WORLD_SIZE / RANK"
    if address is not None:
        try:
            num_processes, process_id = int(num), int(pid) if pid is not None else None
        except ValueError as err:
            raise ValueError(f"{names} must be integers, got {num!r} / {pid!r}") from err
        if process_id is None:
            raise ValueError(f"{names}: the process id is missing (set JAX_PROCESS_ID or RANK)")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is outside [0, {num_processes}) ({names})")
        if num_processes > 1:
            jax.distributed.initialize(address, num_processes, process_id, **kwargs)
    elif auto_detect or _launched_by_cluster(env):
        jax.distributed.initialize(**kwargs)
    from jax._src import xla_bridge

    if not jax.distributed.is_initialized() and not xla_bridge.backends_are_initialized():
        # Nothing started and no backend yet: one process (as far as the environment says) and JAX's backends
        # left unstarted, so the caller may still set them up (`use_host_cores`).
        return 0, 1
    return jax.process_index(), jax.process_count()


def host_cores() -> int:
    """The number of cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_SET_HERE: list[int] = []  # the count `use_host_cores` set in this process (not a user's choice)


def _user_set_cpu_devices() -> bool:
    chosen = jax.config.jax_num_cpu_devices
    return (chosen != -1 and chosen not in _SET_HERE) or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", "")


def use_host_cores(num_devices: int | None = None) -> int | None:
    """Split the CPU backend into `num_devices` XLA devices (default: one per core, `host_cores()`), so that a
    data-parallel mesh (`make_mesh`, every trainer of this module) runs one shard of the batch on each core.

    Why: XLA:CPU runs most of a training step's operations, convolutions included, on one thread (a stack of 3×3
    convolutions runs as fast pinned to one core as on two), so the other cores idle. As data-parallel devices they each
    take a slice of the batch; XLA all-reduces the gradients. Same global batch and key → the same step up to
    float round-off (see the module docstring). On a GPU/TPU host only the unused CPU backend changes.

    Call before the first JAX operation (it sets `jax_num_cpu_devices`, which JAX reads when it starts its
    backends). A CPU device count the caller already chose (`jax_num_cpu_devices`, or `XLA_FLAGS` with
    `--xla_force_host_platform_device_count`) is kept. With `num_devices=None` a call after start-up changes
    nothing; an explicit count that can no longer be set raises `RuntimeError`.

    Returns:
        the CPU device count this call set, or None where it left the count alone.
    """
    from jax._src import xla_bridge

    if num_devices is not None and (not isinstance(num_devices, int) or num_devices < 1):
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
    if _user_set_cpu_devices():
        return None
    if xla_bridge.backends_are_initialized():
        if num_devices is None or num_devices == len(jax.devices("cpu")):
            return None
        raise RuntimeError(f"use_host_cores({num_devices}) must be called before the first JAX operation: JAX "
                           f"already started with {len(jax.devices('cpu'))} CPU device(s)")
    num_devices = host_cores() if num_devices is None else num_devices
    jax.config.update("jax_num_cpu_devices", num_devices)
    _SET_HERE.append(num_devices)
    return num_devices


# ----------------------------------------------------------------------------------------------------------------
# Meshes and placement
# ----------------------------------------------------------------------------------------------------------------


def make_mesh(data: int | None = None, model: int = 1, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D device mesh with axes ("data", "model"); `data` defaults to all devices // `model`.

    The axes are `AxisType.Auto` (GSPMD propagates shardings through the step; `jax.make_mesh` would default to
    Explicit axes). Devices are ordered process by process, so each process owns a contiguous block of `data`.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model={model} must be a positive divisor of the device count {len(devices)}")
    if data is None:
        data = len(devices) // model
    if data < 1 or data * model > len(devices):
        raise ValueError(f"a ({data}, {model}) mesh needs {data * model} devices; {len(devices)} available")
    return jax.make_mesh((data, model), (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto,) * 2,
                         devices=devices[: data * model])


def _param_spec(shape: tuple[int, ...], model_size: int, min_shard_size: int) -> P:
    """Split the last axis divisible by the `model` axis size, for tensors of at least `min_shard_size` values."""
    if model_size > 1 and len(shape) >= 2 and int(np.prod(shape)) >= min_shard_size:
        for axis in reversed(range(len(shape))):
            if shape[axis] % model_size == 0:
                spec = [None] * len(shape)
                spec[axis] = MODEL_AXIS
                return P(*spec)
    return P()


def state_sharding(tree: PyTree, mesh: Mesh, *, min_shard_size: int = 2**18) -> PyTree[NamedSharding]:
    """`NamedSharding`s for a parameter-like pytree (params, optimiser state, a whole `TrainState`).

    Replicated over `data`. With a `model` axis of size > 1, every tensor of rank ≥ 2 holding at least
    `min_shard_size` values is split along its last axis divisible by the `model` size; the rule depends only on
    shapes, so Adam's moments get the sharding of their parameters. Leaves may be arrays or ShapeDtypeStructs.
    """
    model_size = mesh.shape[MODEL_AXIS] if MODEL_AXIS in mesh.shape else 1
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, _param_spec(tuple(np.shape(x)), model_size, min_shard_size)), tree
    )


def _put_global(x, sharding: NamedSharding) -> Array:
    """Place a value that every process holds in full under a (possibly multi-process) sharding."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: PyTree, mesh: Mesh) -> PyTree[Array]:
    """Every leaf replicated on every device of `mesh` (each process must pass the same values)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda x: _put_global(x, sharding), tree)


def shard_state(state: PyTree, mesh: Mesh, *, min_shard_size: int = 2**18) -> PyTree[Array]:
    """Place a `TrainState` (or any parameter-like pytree) with `state_sharding` (replicated unless a `model` axis)."""
    shardings = state_sharding(state, mesh, min_shard_size=min_shard_size)
    return jax.tree_util.tree_map(_put_global, state, shardings)


def _batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def process_batch_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process loads (its devices' shards along `data`), as a slice.

    One process: `slice(0, global_batch_size)`. Raises ValueError if the batch does not split evenly.
    """
    size = mesh.shape[DATA_AXIS]
    if global_batch_size % size:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the data axis size {size}")
    index_map = _batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch_size,))
    rows = sorted({(ix[0].start or 0, global_batch_size if ix[0].stop is None else ix[0].stop)
                   for ix in index_map.values()})
    for (_, stop), (start, _) in zip(rows[:-1], rows[1:]):
        if stop != start:
            raise ValueError(f"this process's rows {rows} are not contiguous; order the mesh's devices by process")
    return slice(rows[0][0], rows[-1][1])


def shard_batch(local_batch: PyTree[Array], mesh: Mesh, *, batch_axis: int = 0) -> PyTree[Array]:
    """A global batch sharded over `data` (along `batch_axis`) from this process's rows (`process_batch_rows`).

    With one process `local_batch` is the whole batch. Uses `jax.make_array_from_process_local_data`, so on
    several hosts each process passes only its own rows and gets the global array (rows ordered by process).
    `batch_axis=1` places K stacked batches (K, B, ...) for `make_sharded_scan_train_step`.
    """

    # This process's devices cover `here` of the mesh's `data` positions (all of them if `model` spans hosts).
    local = {d.id for d in jax.local_devices()}
    here = len({i for i, row in enumerate(mesh.devices) if any(d.id in local for d in np.ravel(row))})
    size = mesh.shape[DATA_AXIS]

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        rows = x.shape[batch_axis]
        if rows % here:
            raise ValueError(f"{rows} local rows do not split over this process's {here} data shards")
        shape = (*x.shape[:batch_axis], rows // here * size, *x.shape[batch_axis + 1:])
        return jax.make_array_from_process_local_data(_batch_sharding(mesh, x.ndim, batch_axis), x, shape)

    return jax.tree_util.tree_map(put, local_batch)


# ----------------------------------------------------------------------------------------------------------------
# Randomness that does not depend on how the batch is split
# ----------------------------------------------------------------------------------------------------------------


def index_batch(x1: Array, start: int = 0, cond: PyTree[Array] | None = None) -> Batch:
    """`fm_jax.losses.Batch(x1, cond, index)` with index = arange(start, start + B) int32: each example's index in
    the global batch.

    With these indices `fm_jax.flow_matching_loss` draws example i's randomness from fold_in(key, index_i), so
    the loss of a global batch gives the same numbers however its rows are split over devices or hosts. On a host
    holding rows [a, b) of the global batch pass `start = process_batch_rows(...).start` (= a). The result is a
    pytree for `shard_batch` / `split_for_pmap`; `cond=None` stays None.
    """
    n = np.shape(x1)[0]
    return Batch(x1, cond, np.arange(start, start + n, dtype=np.int32))


# ----------------------------------------------------------------------------------------------------------------
# Train steps
# ----------------------------------------------------------------------------------------------------------------


def make_sharded_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    ema_decay: float = 0.999,
    min_shard_size: int = 2**18,
):
    """`fm_jax.training.train_step` jitted over `mesh`: batch sharded over `data`, state by `state_sharding`.

    Returns `step(state, batch, path) -> (state, metrics)` with the state donated. Place the inputs first:
    `state = shard_state(state, mesh)`, `batch = shard_batch(local_batch, mesh)`, `path = replicate(path, mesh)`.
    The output state keeps the layout of `state_sharding` (pinned with sharding constraints), metrics are
    replicated scalars. On emulated CPU devices read a metric at least every ~20 steps (see the docs).
    """

    def step(state: TrainState, batch, path):
        batch = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, _batch_sharding(mesh, x.ndim)), batch
        )
        new_state, metrics = train_step(state, batch, path, loss_fn=loss_fn, optimizer=optimizer,
                                        ema_decay=ema_decay)
        new_state = jax.lax.with_sharding_constraint(
            new_state, state_sharding(new_state, mesh, min_shard_size=min_shard_size)
        )
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)


def make_sharded_scan_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    ema_decay: float = 0.999,
    min_shard_size: int = 2**18,
):
    """K steps per compiled call over `mesh`: `steps(state, batches, path) -> (state, metrics (K,))`.

    `batches` are K stacked global batches (K, B, ...) sharded over `data` along axis 1
    (`shard_batch(local, mesh, batch_axis=1)`); one dispatch and no host sync for K steps (what pays on
    accelerators, where a step is shorter than the dispatch). Otherwise as `make_sharded_train_step`.
    """

    def steps(state: TrainState, batches, path):
        batches = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, _batch_sharding(mesh, x.ndim, 1)), batches
        )

        def body(s, batch):
            s, metrics = train_step(s, batch, path, loss_fn=loss_fn, optimizer=optimizer, ema_decay=ema_decay)
            return jax.lax.with_sharding_constraint(s, state_sharding(s, mesh, min_shard_size=min_shard_size)), metrics

        return jax.lax.scan(body, state, batches)

    return jax.jit(steps, donate_argnums=0)


def make_pmap_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.999,
    axis_name: str = DATA_AXIS,
    devices: Sequence[jax.Device] | None = None,
):
    """The same step with `jax.pmap`: loss, metrics and gradients averaged over devices with `lax.pmean`.

    Returns `step(state, batch, path) -> (state, metrics)` with `state` replicated (`replicate_for_pmap`), `batch`
    split (`split_for_pmap`: leaves (n_devices, B / n_devices, ...)) and `path` broadcast; the state is donated.
    Every device gets the same step key fold_in(key, step), so feed batches keyed by global example
    (`index_batch`, i.e. `fm_jax.losses.Batch(x1, index=...)`) to match the single-device step.
    """

    def step(state: TrainState, batch, path):
        key = jax.random.fold_in(state.key, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, batch, path)
        loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), axis_name)
        new_state, skipped = apply_gradients(state, loss, grads, optimizer, ema_decay)
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads), "skipped": skipped}

    return jax.pmap(step, axis_name=axis_name, in_axes=(0, 0, None), donate_argnums=0, devices=devices)


def replicate_for_pmap(
    tree: PyTree, devices: Sequence[jax.Device] | None = None, *, axis_name: str = DATA_AXIS
) -> PyTree[Array]:
    """Stack `tree` once per local device (leading axis n_devices), copy k on device k (pmap's input layout)."""
    devices = list(jax.local_devices() if devices is None else devices)
    sharding = NamedSharding(Mesh(np.array(devices), (axis_name,)), P(axis_name))
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(jnp.broadcast_to(jnp.asarray(x), (len(devices), *np.shape(x))), sharding), tree
    )


def split_for_pmap(batch: PyTree[Array], num_devices: int | None = None) -> PyTree[Array]:
    """Reshape each leaf (B, ...) to (n, B / n, ...): device k gets rows [k B/n, (k+1) B/n)."""
    n = jax.local_device_count() if num_devices is None else num_devices

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by the device count {n}")
        return jnp.reshape(x, (n, x.shape[0] // n, *x.shape[1:]))

    return jax.tree_util.tree_map(split, batch)


def unreplicate(tree: PyTree[Array]) -> PyTree[Array]:
    """The first device's copy of a pmap-replicated pytree."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)
