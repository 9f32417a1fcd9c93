"""Train the same problem on 1 device, on N devices with jit + sharding, and on N devices with pmap.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=N. Prints one JSON line: the max |Δ| of the final
parameters and optimiser state of every variant against the single-device run.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import batch_rows, dataset, problem  # noqa: E402

import fm_jax as fj  # noqa: E402
from fm_jax import distributed as fd  # noqa: E402


def max_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))), a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    n = jax.device_count()
    path, apply, params, optimizer, loss_fn = problem()
    data = dataset()
    batches = [fd.index_batch(data[batch_rows(s)]) for s in range(args.steps)]
    init = lambda: fj.init_train_state(jax.random.key(7), jax.tree_util.tree_map(jnp.copy, params), optimizer)
    out = {"devices": n, "steps": args.steps}

    # Reference: one device (plain arrays live on device 0).
    step = fj.make_train_step(loss_fn, optimizer)
    state = init()
    t0 = time.perf_counter()
    for b in batches:
        state, m = step(state, b, path)
        float(m["loss"])
    ref = jax.device_get(state)
    out["seconds_1"] = time.perf_counter() - t0

    def run_sharded(mesh, min_shard_size, loss=loss_fn):
        step = fd.make_sharded_train_step(loss, optimizer, mesh, min_shard_size=min_shard_size)
        state = fd.shard_state(init(), mesh, min_shard_size=min_shard_size)
        p = fd.replicate(path, mesh)
        losses = []
        for b in batches:
            state, m = step(state, fd.shard_batch(b, mesh), p)
            losses.append(float(m["loss"]))  # a host sync every step (emulated devices deadlock without one)
        return state

    t0 = time.perf_counter()
    state = run_sharded(fd.make_mesh(), 2**18)
    out["seconds_jit"] = time.perf_counter() - t0
    out["jit_data_sharding"] = str(state.params["output_layer"]["kernel"].sharding.spec)
    out["jit_params"] = max_diff(state.params, ref.params)
    out["jit_opt_state"] = max_diff(state.opt_state, ref.opt_state)
    out["jit_ema"] = max_diff(state.ema_params, ref.ema_params)

    if n % 2 == 0 and n > 1:
        state = run_sharded(fd.make_mesh(model=2), 64)
        out["jit_model_axis_sharding"] = str(state.params["hidden_layers"][1]["kernel"].sharding.spec)
        out["jit_model_axis_params"] = max_diff(state.params, ref.params)
        out["jit_model_axis_opt_state"] = max_diff(state.opt_state, ref.opt_state)

    # The loss on plain x1 (no index: batch-shaped randomness) is also split-independent under jit + sharding
    # (one global program).
    plain_loss = functools.partial(fj.flow_matching_loss, apply=apply)
    plain_step = fj.make_train_step(lambda p_, k, b, pa: plain_loss(p_, k, b.x1, pa), optimizer)
    state = init()
    for b in batches:
        state, m = plain_step(state, b, path)
        float(m["loss"])
    plain_ref = jax.device_get(state)
    state = run_sharded(fd.make_mesh(), 2**18, loss=lambda p_, k, b, pa: plain_loss(p_, k, b.x1, pa))
    out["jit_plain_loss_params"] = max_diff(state.params, plain_ref.params)

    pstep = fd.make_pmap_train_step(loss_fn, optimizer)
    state = fd.replicate_for_pmap(init())
    t0 = time.perf_counter()
    for b in batches:
        state, m = pstep(state, fd.split_for_pmap(b), path)
        float(m["loss"][0])
    out["seconds_pmap"] = time.perf_counter() - t0
    copies = jax.device_get(state.params)
    last = jax.tree_util.tree_map(lambda x: x[-1], copies)
    out["pmap_copies_identical"] = bool(max_diff(fd.unreplicate(copies), last) == 0)
    state = fd.unreplicate(jax.device_get(state))
    out["pmap_params"] = max_diff(state.params, ref.params)
    out["pmap_opt_state"] = max_diff(state.opt_state, ref.opt_state)
    # Control: the loss on plain x1 draws one batch-shaped random array: not split-independent under pmap.
    pstep = fd.make_pmap_train_step(lambda p_, k, b, pa: plain_loss(p_, k, b.x1, pa), optimizer)
    state = fd.replicate_for_pmap(init())
    for b in batches:
        state, m = pstep(state, fd.split_for_pmap(b), path)
        float(m["loss"][0])
    out["pmap_plain_loss_params"] = max_diff(fd.unreplicate(jax.device_get(state)).params, plain_ref.params)
    # Sampling data-parallel (`sharding=`): the same source draws, the same samples, computed on the mesh.
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(fd.make_mesh(), PartitionSpec(fd.DATA_AXIS))
    shape = data.shape[1:]
    for name, solver, steps in (("euler", fj.sampling.diffrax.Euler(), 8), ("dopri5", fj.sampling.diffrax.Dopri5(),
                                                                          None)):
        plain = fj.sample(jax.random.key(3), path, apply, ref.params, 64, shape, solver=solver, num_steps=steps)
        split = fj.sample(jax.random.key(3), path, apply, ref.params, 64, shape, solver=solver, num_steps=steps,
                          sharding=sharding)
        out[f"sample_{name}"] = max_diff(split.samples, plain.samples)
        out[f"sample_{name}_devices"] = len(split.samples.sharding.device_set)  # solved on the mesh (1 without)
    try:  # 60 samples do not split over 8 devices: a ValueError that says so
        fj.sample(jax.random.key(3), path, apply, ref.params, 60, shape, num_steps=2, sharding=sharding)
        out["sample_indivisible_error"] = ""
    except ValueError as err:
        out["sample_indivisible_error"] = str(err)
    out["param_scale"] = max_diff(ref.params, jax.tree_util.tree_map(jnp.zeros_like, ref.params))
    out["param_change"] = max_diff(ref.params, params)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
