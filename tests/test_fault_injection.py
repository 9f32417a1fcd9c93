"""Fault injection: the real toy trainer (`python -m experiments.main`) through SIGKILL, SIGTERM, a corrupt newest
checkpoint, all checkpoints corrupt, a structure change and divergence. For each: what the user sees (exit
status, one clear message), and that no checkpoint or metric row is lost (every step of the curve exactly once,
header kept, rows recomputed after a resume equal to the ones lost).

About eight launches of a small MLP (~20 s each on 2 CPU cores): marked slow.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, K, EVERY = 2000, 20, 200
BASE = ["--config", "experiments/configs/tiny.py", f"--config.train.steps={STEPS}",
        f"--config.train.steps_per_call={K}", f"--config.train.checkpoint_every={EVERY}",
        "--config.train.keep_checkpoints=3", "--config.eval.step_counts=(2,)", "--config.eval.adaptive_solver=",
        "--config.eval.trajectory_steps=0", "--config.eval.num_samples=64", "--config.eval.w2_samples=64"]


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments.main", *BASE, "--workdir", str(workdir), *extra]


def _run(workdir, *extra, timeout=300):
    return subprocess.run(_cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _rows(workdir) -> tuple[list[str], list[dict]]:
    with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
        lines = f.read().splitlines()
    return lines, list(csv.DictReader(lines))


def _steps(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _launch_and_signal(workdir, sig, after_step: int):
    """Start a run and send `sig` once its curve passes `after_step` and a checkpoint is on disk."""
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            _, rows = _rows(workdir)
            if rows and int(rows[-1]["step"]) >= after_step and _steps(workdir):
                break
        except (FileNotFoundError, KeyError, ValueError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _assert_complete_curve(workdir, last_step=STEPS):
    lines, rows = _rows(workdir)
    assert lines[0].startswith("step,loss") and sum(line.startswith("step,") for line in lines) == 1
    assert [int(r["step"]) for r in rows] == list(range(K, last_step + 1, K))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """SIGKILL, then SIGTERM, then a clean finish, all in one work directory (the run every case below copies)."""
    workdir = tmp_path_factory.mktemp("run")
    code, _, _ = _launch_and_signal(workdir, signal.SIGKILL, after_step=EVERY + 2 * K)
    assert code == -signal.SIGKILL
    _, before = _rows(workdir)
    killed_at = int(before[-1]["step"])
    assert killed_at < STEPS, "the run finished before the kill: raise STEPS"

    code, _, err = _launch_and_signal(workdir, signal.SIGTERM, after_step=killed_at + EVERY)
    # What the user sees on SIGTERM: status 143 and one line naming the step and how to resume.
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM at step" in err and "relaunch the same command to resume" in err
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert stopped_at in _steps(workdir)
    _assert_complete_curve(workdir, stopped_at)
    # Rows recomputed after the SIGKILL resume equal the rows written before the kill (resume is exact).
    _, after = _rows(workdir)
    by_step = {r["step"]: r["loss"] for r in after}
    assert all(by_step[r["step"]] == r["loss"] for r in before), "resumed curve differs from the killed one"

    out = _run(workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    _assert_complete_curve(workdir)
    assert _steps(workdir)[-1] == STEPS and len(_steps(workdir)) == 3  # keep 3
    assert os.path.exists(os.path.join(workdir, "results.json"))
    assert "orbax" not in out.stderr.lower(), out.stderr[-2000:]  # quiet by default
    return workdir


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _corrupt(workdir, step):
    """Overwrite every data file of checkpoint `step` with garbage (sizes kept)."""
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        for name in files:
            filename = os.path.join(root, name)
            size = os.path.getsize(filename)
            with open(filename, "wb") as f:
                f.write(b"\x13" * max(size, 8))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
    workdir = _copy(finished_run, tmp_path)
    steps = _steps(workdir)
    _corrupt(workdir, steps[-1])
    out = _run(workdir, f"--config.train.steps={STEPS + EVERY}")  # a longer budget: training goes on
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"checkpoint step {steps[-1]}" in out.stderr and f"resuming from step {steps[-2]}" in out.stderr
    assert "pybind11" not in out.stderr and "<" not in out.stderr.split("could not be read")[1].split("\n")[0]
    _assert_complete_curve(workdir, STEPS + EVERY)
    assert STEPS + EVERY in _steps(workdir)


def test_all_checkpoints_corrupt_is_an_error_and_never_a_silent_restart(finished_run, tmp_path):
    workdir = _copy(finished_run, tmp_path)
    for step in _steps(workdir):
        _corrupt(workdir, step)
    lines_before, _ = _rows(workdir)
    for _ in range(2):  # the second launch must refuse too (the first one moved the unreadable steps aside)
        out = _run(workdir)
        assert out.returncode != 0, "a run whose checkpoints are all unreadable started from scratch"
        assert "could be restored" in out.stderr or "corrupt" in out.stderr, out.stderr[-2000:]
    assert _rows(workdir)[0] == lines_before  # the curve is untouched
    # Only an explicit request starts over, and the unreadable checkpoints are kept aside, not deleted.
    out = _run(workdir, "--start_fresh")
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.listdir(os.path.join(workdir, "checkpoints", "previous"))


def test_structure_change_is_a_clear_error_and_touches_nothing(finished_run, tmp_path):
    workdir = _copy(finished_run, tmp_path)
    steps, (lines, _) = _steps(workdir), _rows(workdir)
    out = _run(workdir, "--config.model.hidden=48")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "error:" in out.stderr and "model.hidden" in out.stderr and "Traceback" not in out.stderr
    assert _steps(workdir) == steps and not os.path.exists(os.path.join(workdir, "checkpoints", "corrupt"))
    assert _rows(workdir)[0] == lines


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    out = _run(tmp_path, "--config.train.learning_rate=1e38", "--config.train.warmup_steps=0",
               "--config.train.max_bad_steps=100", "--config.train.checkpoint_every=20")
    assert out.returncode == 1, out.stderr[-2000:]
    # The update at step 1 overflowed the parameters; steps 2..120 were skipped; the stop comes after the call
    # that passes 100 bad steps, and no checkpoint was written during the streak.
    assert "error: training diverged: the last 119 steps (to step 120)" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert _steps(tmp_path) == []
    _, rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(K, 120 + 1, K))  # the curve up to the stop is kept
