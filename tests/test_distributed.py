"""Data-parallel and multi-host training: 1 device = 8 devices (jit + sharding, pmap) = 2 processes.

Runs needing several devices or processes go to subprocesses (`tests/_scripts/`), with
XLA_FLAGS=--xla_force_host_platform_device_count set there only: emulated devices slow everything else down.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fj
from fm_jax import distributed as fd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "_scripts")
sys.path.insert(0, SCRIPTS)

# float32 tolerance for parameters after 12 Adam steps: reductions run in a different order on 1 and 8 devices
# (per-step gradient differences ~1e-7 relative); parameters are O(1) and each step moves them by at most the
# learning rate 1e-2, so 1e-5 leaves ~100x headroom over the observed ~1e-7 while a wrong gradient average or a
# different random draw (the control below: ~1e-2) fails.
PARAM_TOL = 1e-5


_CACHE_DIR = ""


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    global _CACHE_DIR
    _CACHE_DIR = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")


def _env(devices: int | None = None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # A compilation cache shared by the subprocesses of this session: a re-launched script skips compilation
    # (the cached executables are the same programs, so results stay bit-identical).
    env["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_one_device_equals_eight_devices_jit_and_pmap():
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "dp_equivalence.py"), "--steps", "12"],
                          env=_env(devices=8), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    assert out["devices"] == 8
    assert out["param_change"] > 0.05  # training moved the parameters, so agreement is not trivial
    for name in ("jit_params", "jit_opt_state", "jit_ema", "jit_model_axis_params", "jit_model_axis_opt_state",
                 "jit_plain_loss_params", "pmap_params", "pmap_opt_state"):
        assert out[name] < PARAM_TOL, (name, out[name])
    assert out["jit_model_axis_sharding"] == "P(None, 'model')"  # the model axis really split a kernel
    assert out["pmap_copies_identical"]
    # Control: the loss on plain x1 (no index) under pmap draws different numbers per device: parameters differ.
    assert out["pmap_plain_loss_params"] > 100 * PARAM_TOL
    # fj.sample(..., sharding=) over the 8 devices: the same samples, solved on the mesh.
    for name in ("euler", "dopri5"):
        assert out[f"sample_{name}"] < 1e-5 and out[f"sample_{name}_devices"] == 8, out
    assert "60 samples cannot be split" in out["sample_indivisible_error"], out["sample_indivisible_error"]


@pytest.mark.distributed
def test_two_processes_train_in_lockstep_with_one_process(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(devices=2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        command = [sys.executable, os.path.join(SCRIPTS, "multihost_train.py"), "--steps", "20", "--out",
                   str(tmp_path), "--checkpoint-dir", str(tmp_path / "ckpt")]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["processes"] for o in outs] == [2, 2] and outs[0]["devices"] == 4
    assert outs[0]["rows"] == [0, 32] and outs[1]["rows"] == [32, 64]  # each process loaded only its half

    a, b = (np.load(tmp_path / f"process_{i}.npz") for i in range(2))
    # Lock-step: both processes hold bit-identical replicated state and saw the same loss at every step.
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # The checkpoint written jointly by the two processes restores, in one process, to the same values.
    import _common
    import multihost_train

    from fm_jax.checkpoint import TrainingCheckpointer

    _, _, params, optimizer, _ = _common.problem()
    with TrainingCheckpointer(tmp_path / "ckpt", {"global_batch": 64}, handle_sigterm=False) as ckpt:
        restored = ckpt.restore(fj.init_train_state(jax.random.key(7), params, optimizer))
    assert int(restored.step) == 20
    for i, x in enumerate(jax.tree_util.tree_leaves((restored.params, restored.opt_state))):
        np.testing.assert_array_equal(a[f"leaf_{i}"], x)

    # One process, one device, the same global batches (this pytest process has a single CPU device).
    leaves, losses, rows = multihost_train.train(20)
    assert rows == slice(0, 64)
    diff = max(float(np.max(np.abs(a[f"leaf_{i}"] - x))) for i, x in enumerate(leaves))
    print(f"2 processes x 2 devices vs 1 process: max |param/opt-state diff| = {diff:.3g}")
    assert diff < PARAM_TOL
    np.testing.assert_allclose(a["losses"], losses, rtol=1e-5)  # float32 loss, different reduction order


# ---------------------------------------------------------------------------------------------------------------
# In-process unit tests (one device)
# ---------------------------------------------------------------------------------------------------------------


def _tiny_apply(params, z, t, cond=None, *, key=None):
    """u(z, t) = W2 tanh(W1 [z, t] + b1) + b2: cheap to compile, output O(1) (no conditioning, no dropout)."""
    del cond, key
    t = jnp.broadcast_to(jnp.asarray(t), (z.shape[0],)).astype(z.dtype)
    h = jnp.tanh(jnp.concatenate([z, t[:, None]], axis=-1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def _problem():
    path = fj.paths.AffinePath(fj.paths.CondOT())
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (3, 32)) / np.sqrt(3), "b1": jnp.zeros(32),
              "w2": jax.random.normal(k2, (32, 2)) / np.sqrt(32), "b2": jnp.zeros(2)}
    x1 = fj.data.toy.half_moons(jax.random.key(1), 16)
    return path, _tiny_apply, params, x1


def test_indexed_loss_is_independent_of_the_split():
    """The mean of the loss (and gradient) over two halves with global indices equals the full-batch value."""
    path, apply, params, x1 = _problem()
    loss = jax.jit(functools.partial(fj.flow_matching_loss, apply=apply))
    key = jax.random.key(3)
    grad = jax.jit(jax.grad(lambda p, b: loss(p, key, b, path)[0]))
    full = fd.index_batch(x1)
    halves = [fd.index_batch(x1[:8], 0), fd.index_batch(x1[8:], 8)]
    whole = loss(params, key, full, path)[0]
    split = 0.5 * (loss(params, key, halves[0], path)[0] + loss(params, key, halves[1], path)[0])
    np.testing.assert_allclose(whole, split, rtol=1e-6)  # float32 sums of 16 terms
    g_full = grad(params, full)
    g_split = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), grad(params, halves[0]), grad(params, halves[1]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_full, g_split)
    # The wrong indices (every half starting at 0) give a different loss: the index really keys the draws.
    wrong = 0.5 * (loss(params, key, halves[0], path)[0] + loss(params, key, fd.index_batch(x1[8:], 0), path)[0])
    assert abs(float(wrong) - float(whole)) > 1e-4


def test_indexed_loss_has_the_flow_matching_expectation():
    """Averaged over keys, the loss with per-example keys (`index_batch`) estimates the same objective as the
    loss on plain x1."""
    path, apply, params, x1 = _problem()
    keys = jax.random.split(jax.random.key(5), 400)
    keyed = functools.partial(fj.flow_matching_loss, apply=apply)
    a = jax.jit(jax.vmap(lambda k: keyed(params, k, fd.index_batch(x1), path)[0]))
    b = jax.jit(jax.vmap(lambda k: fj.flow_matching_loss(params, k, x1, path, apply=apply)[0]))
    la, lb = np.asarray(a(keys)), np.asarray(b(keys))
    # Two independent means of 400 draws: 5 standard errors of the difference.
    se = np.sqrt(la.var() / la.size + lb.var() / lb.size)
    assert abs(la.mean() - lb.mean()) < 5 * se


def test_mixed_precision_computes_in_bf16_and_keeps_f32_parameters():
    path, _, params, x1 = _problem()
    seen = {}

    def spy(p, z, t, cond=None, *, key=None):
        seen["params"] = {x.dtype for x in jax.tree_util.tree_leaves(p)}
        seen["z"], seen["t"] = z.dtype, t.dtype
        return _tiny_apply(p, z, t)

    bf16 = fj.models.mixed_precision(spy)
    t = jnp.full((16,), 0.3)
    out16 = bf16(params, x1, t)
    assert seen == {"params": {jnp.dtype(jnp.bfloat16)}, "z": jnp.bfloat16, "t": jnp.float32}
    assert out16.dtype == jnp.float32
    out32 = _tiny_apply(params, x1, t)
    # bf16 rounds each of the ~35-term dot products' inputs and outputs by 2^-8 relative; outputs are O(1):
    # a few 1e-2 absolute at most (a float32 computation agrees to 1e-6).
    np.testing.assert_allclose(out16, out32, atol=0.05)
    assert float(jnp.max(jnp.abs(out16 - out32))) > 1e-5  # and it really computed in bf16

    optimizer = fj.make_optimizer(1e-2)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=bf16)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, jax.random.key(2), fd.index_batch(x1), path)[0]))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    state = fj.init_train_state(jax.random.key(0), params, optimizer)
    step = fj.make_train_step(loss_fn, optimizer)
    losses = []
    for i in range(30):
        state, m = step(state, fd.index_batch(fj.data.toy.half_moons(jax.random.key(i), 128)), path)
        losses.append(float(m["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves((state.params, state.ema_params)))
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < np.mean(losses[:10])


def test_initialize_from_env_single_process_and_bad_values():
    assert fd.initialize_from_env({}) == (0, 1)
    assert fd.initialize_from_env({"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}) == (0, 1)
    assert fd.initialize_from_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == (0, 1)  # one task: nothing to join
    with pytest.raises(ValueError, match="integers"):
        fd.initialize_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="process id is missing"):
        fd.initialize_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="outside"):
        fd.initialize_from_env({"MASTER_ADDR": "h", "WORLD_SIZE": "2", "RANK": "2"})


_HOST_CORES_SCRIPT = """
import json, jax, pytest
from fm_jax import distributed as fd
out = {"set": fd.use_host_cores(3)}
out["devices"] = len(jax.devices("cpu"))
out["again"] = [fd.use_host_cores(3), fd.use_host_cores()]  # started with 3 already: nothing to change
with pytest.raises(RuntimeError, match="before the first JAX operation"):
    fd.use_host_cores(2)
with pytest.raises(ValueError, match="positive integer"):
    fd.use_host_cores(0)
print(json.dumps(out))
"""


def test_use_host_cores_splits_the_cpu_before_start_up_and_keeps_a_users_count():
    def run(**env):
        out = subprocess.run([sys.executable, "-c", _HOST_CORES_SCRIPT], env=_env(**env), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1])

    assert run() == {"set": 3, "devices": 3, "again": [None, None]}
    # XLA_FLAGS chose 2 devices: kept (the explicit 3 is not applied, and the later calls see 2 devices).
    kept = subprocess.run([sys.executable, "-c", "import jax; from fm_jax import distributed as fd; "
                           "print(fd.use_host_cores(3), fd.use_host_cores(), len(jax.devices('cpu')))"],
                          env=_env(devices=2), capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0 and kept.stdout.split() == ["None", "None", "2"], kept.stderr[-3000:]


def test_host_device_count_of_an_image_config(monkeypatch):
    from experiments import common
    from experiments.configs import image_base
    from experiments.train_images import host_device_count

    monkeypatch.setattr(fd, "host_cores", lambda: 4)
    c = image_base.mnist("cond_ot")
    assert c.train.host_devices == 0 and c.train.batch_size == 64 and host_device_count(c) == 4
    c.train.batch_size = 30
    assert host_device_count(c) == 3  # the most cores that divide the batch
    c.train.batch_size = 7
    assert host_device_count(c) == 1
    c.train.host_devices = 5
    assert host_device_count(c) == 5  # explicit: validate() checks the batch against it
    c.train.host_devices, c.train.model_axis = 0, 2
    assert host_device_count(c) is None  # a model axis: the device layout is the user's
    c.train.host_devices = -1
    with pytest.raises(common.ConfigError, match="host_devices"):
        host_device_count(c)


def test_single_device_placement_helpers():
    mesh = fd.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    assert fd.process_batch_rows(8, mesh) == slice(0, 8)
    batch = fd.shard_batch(fd.index_batch(np.zeros((8, 2), np.float32)), mesh)
    assert isinstance(batch, fj.losses.Batch) and batch.cond is None
    assert batch.x1.shape == (8, 2) and batch.index.tolist() == list(range(8))
    labels = np.arange(4, 8)
    batch = fd.shard_batch(fd.index_batch(np.zeros((4, 2), np.float32), start=4, cond=labels), mesh)
    assert batch.index.tolist() == [4, 5, 6, 7] and batch.cond.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="divisor"):
        fd.make_mesh(model=3)
    with pytest.raises(ValueError, match="needs 4 devices"):
        fd.make_mesh(data=4)
    with pytest.raises(ValueError, match="not divisible"):
        fd.split_for_pmap(jnp.zeros((5, 2)), 2)
    split = fd.split_for_pmap({"x": jnp.arange(8.0)}, 4)
    assert split["x"].shape == (4, 2)
    specs = fd.state_sharding({"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)}, mesh, min_shard_size=1)
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree_util.tree_leaves(specs))


def test_train_distributed_entry_point_resumes(tmp_path):
    """The multi-host entry point on one device: trains, checkpoints, and a relaunch continues from the last step."""
    from experiments.configs.default import get_config
    from experiments.train_distributed import train_distributed

    config = get_config()
    config.model.hidden, config.model.depth, config.train.batch_size, config.train.steps = 32, 2, 32, 6
    out = train_distributed(config, str(tmp_path), save_every=4, log_every=3, handle_sigterm=False)
    assert out["step"] == 6 and out["resumed_from"] is None and np.isfinite(out["loss"])
    config.train.steps = 9  # extending a run is allowed (train.steps is an ignored config key)
    out = train_distributed(config, str(tmp_path), save_every=4, log_every=3, handle_sigterm=False)
    assert out["step"] == 9 and out["resumed_from"] == 6
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "6", "9"]  # the curve continues across the relaunch
    steps = {name for name in os.listdir(tmp_path / "checkpoints") if name.isdigit()}
    assert steps == {"6", "8", "9"}  # keep=3: step 4 was removed
