"""Orbax checkpoints: exact resume after SIGKILL, corrupt-step fallback, config mismatch, SIGTERM final save."""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fj
from fm_jax import distributed as fd
from fm_jax.checkpoint import (
    ConfigMismatchError,
    CorruptCheckpointWarning,
    NoUsableCheckpointError,
    StructureMismatchError,
    TrainingCheckpointer,
    config_diff,
    git_revision,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "_scripts", "ckpt_train.py")
N = 5  # steps per save interval


_CACHE_DIR = ""


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    global _CACHE_DIR
    _CACHE_DIR = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # A compilation cache shared by the subprocesses of this session: a re-launched script skips compilation
    # (the cached executables are the same programs, so results stay bit-identical).
    env["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _run(*args: str, timeout: float = 180) -> str:
    proc = subprocess.run([sys.executable, SCRIPT, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 180) -> list[str]:
    """Read the process's stdout until a line starting with `word` (the lines read so far)."""
    lines, start = [], time.monotonic()
    while time.monotonic() - start < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(word):
            return lines
    proc.kill()
    raise AssertionError(f"no {word!r} line; got {lines}; stderr: {proc.stderr.read()[-3000:]}")


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    """2N steps straight == N steps, SIGKILL (mid-interval, after step N + 2), resume, N more: every leaf equal."""
    straight = tmp_path / "straight.npz"
    out = _run("--workdir", str(tmp_path / "a"), "--steps", str(2 * N), "--save-every", str(N), "--out", str(straight))
    assert out.split()[0] == "FRESH" and f"DONE {2 * N}" in out

    work = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--workdir", str(work), "--steps", str(2 * N), "--save-every",
                             str(N), "--hang-after", str(N + 2)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = _wait_for(proc, "HANGING")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert lines == ["FRESH", f"SAVED {N}", f"HANGING {N + 2}"]

    resumed = tmp_path / "resumed.npz"
    out = _run("--workdir", str(work), "--steps", str(2 * N), "--save-every", str(N), "--out", str(resumed))
    assert out.split()[:2] == ["RESUMED", str(N)]
    a, b = np.load(straight), np.load(resumed)
    assert sorted(a.files) == sorted(b.files)
    assert any("opt_state" in k for k in a.files) and any("params" in k for k in a.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical: exact equality, no tolerance
    assert int(a[".step"]) == 2 * N
    # The config and the git revision are stored beside the checkpoints.
    assert json.loads((work / "config.json").read_text())["model"]["width"] == 32
    # (The revision, not equality with HEAD now: commits may land while the test runs.)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", (work / "git_revision.txt").read_text().strip())
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", git_revision())


def test_sigterm_triggers_a_final_save(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--workdir", str(work), "--steps", "100000", "--save-every",
                             "100000", "--sleep", "0.02"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, "FRESH")
        time.sleep(1.0)  # some steps in
        proc.send_signal(signal.SIGTERM)
        lines = _wait_for(proc, "STOPPED", timeout=60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    stopped = int(lines[-1].split()[1])
    assert 0 < stopped < 100000
    # The final checkpoint is complete and restorable: resuming continues from the signalled step.
    out = _run("--workdir", str(work), "--steps", str(stopped + 1), "--save-every", "100000")
    assert out.split()[:2] == ["RESUMED", str(stopped)]


# ---------------------------------------------------------------------------------------------------------------
# In-process: corruption and config checks
# ---------------------------------------------------------------------------------------------------------------

CONFIG = {"model": {"width": 32, "depth": 2}, "optimizer": {"learning_rate": 1e-2, "betas": (0.9, 0.999)}}


def _apply(params, z, t, cond=None, *, key=None):
    del cond, key  # the model interface: no conditioning, no stochastic layers
    h = jnp.tanh(jnp.concatenate([z, jnp.broadcast_to(t, z.shape[:1])[:, None]], -1) @ params["w1"] + params["b"])
    return h @ params["w2"]


@pytest.fixture(scope="module")
def trained():
    """States after every step of a short run (saved into checkpoints by each test)."""
    path = fj.paths.AffinePath(fj.paths.CondOT())
    params = {"w1": jax.random.normal(jax.random.key(0), (3, 32)) * 0.5, "b": jnp.zeros(32),
              "w2": jax.random.normal(jax.random.key(1), (32, 2)) * 0.2}
    optimizer = fj.make_optimizer(1e-2)
    step = jax.jit(lambda s, b: fj.training.train_step(
        s, b, path, loss_fn=functools.partial(fj.flow_matching_loss, apply=_apply),
        optimizer=optimizer))
    state = fj.init_train_state(jax.random.key(2), params, optimizer)
    states = [state]
    for i in range(3 * N):
        state, _ = step(state, fd.index_batch(np.random.default_rng(i).normal(size=(32, 2)).astype(np.float32)))
        states.append(state)
    return states


def _save_all(directory, states, **kwargs) -> TrainingCheckpointer:
    ckpt = TrainingCheckpointer(directory, CONFIG, keep=3, save_every=N, handle_sigterm=False, **kwargs)
    for s in states[1:]:
        ckpt.save(s)
    ckpt.wait_until_finished()
    return ckpt


def _assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _truncate_all(step_dir):
    for f in glob.glob(os.path.join(step_dir, "**"), recursive=True):
        if os.path.isfile(f):
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)


def _garble_data(step_dir):
    for f in glob.glob(os.path.join(step_dir, "state", "d", "*")):
        with open(f, "wb") as fh:
            fh.write(np.random.default_rng(0).bytes(os.path.getsize(f)))


def _remove_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.mark.parametrize("corrupt", [_truncate_all, _garble_data, _remove_state], ids=lambda f: f.__name__[1:])
def test_corrupt_latest_checkpoint_warns_and_resumes_from_the_previous(tmp_path, trained, corrupt):
    ckpt = _save_all(tmp_path, trained)
    assert ckpt.all_steps() == [N, 2 * N, 3 * N]
    ckpt.close()
    corrupt(os.path.join(tmp_path, str(3 * N)))

    ckpt = TrainingCheckpointer(tmp_path, CONFIG, keep=3, save_every=N, handle_sigterm=False)
    with pytest.warns(CorruptCheckpointWarning, match=rf"step {3 * N} .*could not be read.*resuming from step {2 * N}"):
        state, resumed = ckpt.restore_or_init(trained[0])
    assert resumed and int(state.step) == 2 * N  # one interval lost, no more
    _assert_same(state, trained[2 * N])
    assert ckpt.all_steps() == [N, 2 * N]
    assert os.listdir(tmp_path / "corrupt")[0].startswith(f"{3 * N}-")  # kept aside for inspection
    # Training goes on and saves step 3N again.
    ckpt.save(trained[3 * N])
    ckpt.close()
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, keep=3, save_every=N, handle_sigterm=False)
    state, resumed = ckpt.restore_or_init(trained[0])
    _assert_same(state, trained[3 * N])
    ckpt.close()


def test_half_written_checkpoint_is_ignored(tmp_path, trained):
    """A save killed midway leaves Orbax's temporary directory: it is never listed, and resume uses the last one."""
    ckpt = _save_all(tmp_path, trained[: 2 * N + 1])
    ckpt.close()
    half = tmp_path / f"{3 * N}.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / str(2 * N), half)
    _truncate_all(str(half))
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, keep=3, save_every=N, handle_sigterm=False)
    state, resumed = ckpt.restore_or_init(trained[0])
    assert resumed and ckpt.all_steps() == [N, 2 * N]
    _assert_same(state, trained[2 * N])
    ckpt.close()


def _listing(directory) -> list[str]:
    return sorted(os.path.relpath(f, directory) for f in glob.glob(os.path.join(directory, "**"), recursive=True))


def test_every_checkpoint_corrupt_is_an_error_and_nothing_moves(tmp_path, trained):
    ckpt = _save_all(tmp_path, trained[: 2 * N + 1])
    ckpt.close()
    _remove_state(os.path.join(tmp_path, str(2 * N)))
    _garble_data(os.path.join(tmp_path, str(N)))
    before = _listing(tmp_path)
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, no warning about steps being moved
        with pytest.raises(NoUsableCheckpointError, match=rf"could be restored.*\n  step {2 * N}: .*\n  step {N}: "):
            ckpt.restore_or_init(trained[0])
    assert _listing(tmp_path) == before  # nothing deleted, nothing moved
    # Launching again says the same: never a silent fresh start.
    with pytest.raises(NoUsableCheckpointError):
        ckpt.restore_or_init(trained[0])
    ckpt.close()


def test_corrupt_warning_is_one_readable_line(tmp_path, trained):
    _save_all(tmp_path, trained[: 2 * N + 1]).close()
    _garble_data(os.path.join(tmp_path, str(2 * N)))
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    with pytest.warns(CorruptCheckpointWarning) as record:
        ckpt.restore_or_init(trained[0])
    message = str(record[0].message)
    assert "\n" not in message and " at 0x" not in message and "source locations" not in message, message
    ckpt.close()


def test_moved_aside_checkpoints_are_never_a_silent_fresh_start(tmp_path, trained):
    _save_all(tmp_path, trained[: N + 1]).close()
    os.makedirs(tmp_path / "corrupt")
    os.rename(tmp_path / str(N), tmp_path / "corrupt" / f"{N}-20260101T000000")
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    with pytest.raises(NoUsableCheckpointError, match="start_fresh=True"):
        ckpt.restore_or_init(trained[0])
    ckpt.close()


def test_start_fresh_moves_everything_aside_and_deletes_nothing(tmp_path, trained):
    _save_all(tmp_path, trained[: 2 * N + 1]).close()
    os.makedirs(tmp_path / "corrupt" / "old")
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    state, resumed = ckpt.restore_or_init(trained[0], start_fresh=True)
    assert not resumed and state is trained[0] and ckpt.all_steps() == []
    (stamp,) = os.listdir(tmp_path / "previous")
    assert sorted(os.listdir(tmp_path / "previous" / stamp)) == sorted([str(N), str(2 * N), "corrupt"])
    ckpt.save(trained[N], force=True)  # the fresh run saves and resumes as usual
    ckpt.wait_until_finished()
    state, resumed = ckpt.restore_or_init(trained[0])
    assert resumed and int(state.step) == N
    ckpt.close()


def test_structure_change_is_an_error_naming_the_leaves_and_touches_nothing(tmp_path, trained):
    _save_all(tmp_path, trained[: 2 * N + 1]).close()
    before = _listing(tmp_path)
    # The code changed: w1 is wider and a new leaf appeared (a fresh state of another architecture).
    params = {"w1": jnp.zeros((3, 64)), "b": jnp.zeros(32), "w2": jnp.zeros((32, 2)), "w3": jnp.zeros(2)}
    other = fj.init_train_state(jax.random.key(2), params, fj.make_optimizer(1e-2))
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not reported as corruption
        with pytest.raises(StructureMismatchError, match=r"params/w1: \(3, 32\) float32 → \(3, 64\) float32") as info:
            ckpt.restore_or_init(other)
    assert "params/w1" in info.value.differences and "params/w3" in info.value.differences
    assert "ema_params/w1" in info.value.differences and "b" not in " ".join(info.value.differences)
    assert "<absent> → (2,) float32" in str(info.value)
    with pytest.raises(StructureMismatchError):
        ckpt.restore(other)
    assert _listing(tmp_path) == before and not os.path.exists(tmp_path / "corrupt")
    # The run itself still resumes with its own code.
    state, resumed = ckpt.restore_or_init(trained[0])
    assert resumed and int(state.step) == 2 * N
    ckpt.close()


def test_orbax_info_logging_is_quiet_unless_verbose(tmp_path, trained, caplog):
    with caplog.at_level(logging.DEBUG):
        _save_all(tmp_path / "quiet", trained[: N + 1]).close()
    orbax_info = [r for r in caplog.records if "orbax" in r.pathname and r.levelno < logging.WARNING]
    assert orbax_info == []
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        _save_all(tmp_path / "loud", trained[: N + 1], verbose=True).close()
    assert any("orbax" in r.pathname and r.levelno == logging.INFO for r in caplog.records)
    TrainingCheckpointer(tmp_path / "reset", CONFIG, handle_sigterm=False).close()  # back to quiet


def test_mismatched_config_is_a_clear_error(tmp_path, trained):
    _save_all(tmp_path, trained[: N + 1]).close()
    other = {"model": {"width": 64, "depth": 2}, "optimizer": {"learning_rate": 1e-2, "betas": [0.9, 0.999]},
             "seed": 1}
    ckpt = TrainingCheckpointer(tmp_path, other, handle_sigterm=False)
    with pytest.raises(ConfigMismatchError, match=r"model\.width: 32 → 64") as info:
        ckpt.restore_or_init(trained[0])
    assert info.value.differences == ["model.width", "seed"]  # the tuple/list of betas is not a difference
    assert "seed: '<absent>' → 1" in str(info.value)
    ckpt.close()
    # Keys declared as changeable are ignored.
    ckpt = TrainingCheckpointer(tmp_path, other, ignore_config_keys=("model.width", "seed"), handle_sigterm=False)
    state, resumed = ckpt.restore_or_init(trained[0])
    assert resumed
    _assert_same(state, trained[N])
    ckpt.close()


def test_keep_and_save_every(tmp_path, trained):
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, keep=2, save_every=4, handle_sigterm=False)
    for s in trained[1:]:
        ckpt.save(s)
    assert ckpt.all_steps() == [8, 12]
    ckpt.save(trained[13], force=True)
    ckpt.request_stop()
    assert ckpt.save(trained[14])  # a stop request saves whatever the step and tells the loop to stop
    assert ckpt.all_steps() == [13, 14] and ckpt.preempted
    ckpt.close()
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(CONFIG))
    with pytest.raises(ValueError, match="keep"):
        TrainingCheckpointer(tmp_path / "x", CONFIG, keep=0, handle_sigterm=False)
    with pytest.raises(ValueError, match="save_every"):
        TrainingCheckpointer(tmp_path / "x", CONFIG, save_every=0, handle_sigterm=False)


def test_config_diff_and_fresh_start(tmp_path, trained):
    assert config_diff({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": (1, 2)}}) == []
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 2}, "d": 3}, ignore=("d",)) == ["a.b: 1 → 2"]
    assert config_diff({"train": {"steps": 1, "lr": 2}}, {"train": {"steps": 5, "lr": 2}}, ignore=("train",)) == []
    ckpt = TrainingCheckpointer(tmp_path, CONFIG, handle_sigterm=False)
    state, resumed = ckpt.restore_or_init(trained[0])
    assert not resumed and state is trained[0]
    with pytest.raises(FileNotFoundError):
        ckpt.restore(trained[0])
    ckpt.close()
