"""`experiments.pool.map_cells`: in-order results from spawned single-threaded XLA:CPU workers, errors re-raised,
the caller's environment restored, the same numbers as in-process."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell(n: int) -> dict:
    # A small compiled computation, its result as NumPy, and what the worker's XLA saw.
    x = jnp.arange(n, dtype=jnp.float32)
    return {"n": n, "value": np.asarray(jnp.sum(jnp.sin(x) ** 2)), "flags": os.environ.get("XLA_FLAGS", ""),
            "pid": os.getpid(), "cores": tuple(sorted(os.sched_getaffinity(0)))}


def _fails(n: int) -> int:
    if n == 2:
        raise ValueError(f"cell {n} failed")
    return n


def _sleeps(job) -> None:
    # A cell busy outside training (as when evaluating): says it started, then sleeps.
    marker_dir, seconds = job
    open(os.path.join(marker_dir, str(os.getpid())), "w").close()
    time.sleep(seconds)


def test_sigterm_stops_workers_busy_outside_training_at_once(tmp_path):
    # Each worker is in a 60 s cell when the caller gets SIGTERM: the caller must exit with 143 within seconds
    # (the workers abandon their cells; a training cell would checkpoint first), not after the cells end.
    code = ("import sys; from experiments import pool; from tests.test_pool import _sleeps; "
            f"list(pool.map_cells(_sleeps, [({str(tmp_path)!r}, 60)] * 4, workers=2))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert len(os.listdir(tmp_path)) == 2, "the workers never started their cells"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert status == 143 and time.monotonic() - start < 30
    assert "stopped by SIGTERM" in proc.stderr.read()
    for pid in map(int, os.listdir(tmp_path)):  # and the workers are gone
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_finished_map_ends_its_workers_quietly():
    # At the end of a normal run the executor stops its idle workers; they must exit without a traceback, also when
    # the caller stops reading at the last item (zip, as the tables do) and the generator is closed, not exhausted.
    code = ("from experiments import pool; from tests.test_pool import _fails; items = [1, 3, 4, 5]; "
            "print([got for _, got in zip(items, pool.map_cells(_fails, items, workers=2))])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[1, 3, 4, 5]"
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_map_cells_in_order_in_single_threaded_workers():
    before = os.environ.get("XLA_FLAGS")
    items = [5, 17, 3, 40, 9]
    got = list(pool.map_cells(_cell, items, workers=2))
    assert [g["n"] for g in got] == items
    assert all(pool.SINGLE_THREAD_FLAGS in g["flags"] for g in got)
    assert {g["pid"] for g in got}.isdisjoint({os.getpid()}) and len({g["pid"] for g in got}) <= 2
    if pool.cpu_cores() >= 2:  # each worker pinned to its own core
        cores = {g["pid"]: g["cores"] for g in got}
        assert all(len(c) == 1 for c in cores.values()) and len(set(cores.values())) == len(cores)
    here = [_cell(n) for n in items]  # the same numbers in this (multi-threaded) process
    np.testing.assert_allclose([g["value"] for g in got], [h["value"] for h in here], rtol=1e-6)
    assert os.environ.get("XLA_FLAGS") == before


def test_map_cells_reraises_a_cells_error():
    with pytest.raises(ValueError, match="cell 2 failed"):
        list(pool.map_cells(_fails, [1, 2, 3], workers=2))


def test_one_worker_runs_in_process():
    assert [g["pid"] for g in pool.map_cells(_cell, [1, 2], workers=1)] == [os.getpid()] * 2


@pytest.mark.parametrize("bad", [-1, 1.5, "auto", True])
def test_resolve_workers_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="workers must be"):
        pool.resolve_workers(bad)


def test_resolve_workers_auto_is_one_per_core_on_cpu():
    expected = pool.cpu_cores() if jax.default_backend() == "cpu" else 1
    assert pool.resolve_workers(0) == expected
