"""CPU proof of the CIFAR-10 pipeline: every paper's config, train → checkpoint → SIGKILL → resume → evaluate → table.

A tiny dataset in tfds's `cifar10` format (random 32×32×3 images, train and test splits, `write_cifar10_format`),
an FID Inception-v3 with random weights written in the converter's file format (no PyTorch), and the reduced table
config `tests/_scripts/tiny_cifar_table.py` (the six CIFAR-10 paths of `configs/cifar10_table.py`, a one-level
8-channel U-Net, 20 steps). One subprocess runs the table driver; it is killed with SIGKILL once the first path has
a checkpoint, then relaunched, and must resume and finish every path. The figures prove the pipeline, not the
models (random data, random Inception).

`make test` runs two rows that cover every branch (HGF: a first-order path with a density and EDM's sampler,
killed and resumed; ForM: phase space, no density); the `slow` variant runs all six paper configs (about 3× the
CPU time: every path compiles its own train step, samplers and likelihood).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PATHS = ("cond_ot", "vp", "ko", "kac", "hgf", "form")
WITH_DENSITY = ("cond_ot", "vp", "ko", "hgf")  # first-order paths with a source density: bits/dim apply


def _tiny():
    spec = importlib.util.spec_from_file_location("tiny_cifar_table", os.path.join(ROOT, "tests", "_scripts",
                                                                                   "tiny_cifar_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(root, log, paths):
    # A persistent compilation cache shared by the killed run and the relaunch: the relaunch reuses what the
    # first process compiled (the first path's train step) instead of compiling it again.
    env = {**os.environ, "FM_JAX_TINY_ROOT": str(root), "FM_JAX_TINY_PATHS": ",".join(paths), "PYTHONPATH": ROOT,
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(root / "xla_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    cmd = [sys.executable, "-m", "experiments.image_table", "--config", "tests/_scripts/tiny_cifar_table.py",
           "--workdir", str(root / "table")]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("paths", [("hgf", "form"), pytest.param(ALL_PATHS, marks=pytest.mark.slow)],
                         ids=["two_paths", "all_six"])
def test_cifar10_table_trains_survives_sigkill_resumes_and_reports_every_column(tmp_path, paths):
    _tiny().prepare(str(tmp_path))  # random CIFAR-10-format splits (write_cifar10_format), random Inception .npz

    first = tmp_path / "table" / f"cifar10_{paths[0]}"
    with open(tmp_path / "run1.log", "w") as log:
        proc = _launch(tmp_path, log, paths)
        deadline = time.monotonic() + 600
        while not (first / "checkpoints" / "10").exists():
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "table" / "cifar10_table.csv").exists()  # killed inside the first path

    with open(tmp_path / "run2.log", "w") as log:
        proc = _launch(tmp_path, log, paths)
        assert proc.wait(timeout=900) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    out = (tmp_path / "run2.log").read_text()
    name = importlib.import_module(f"experiments.configs.cifar10_{paths[0]}").get_config().path.name
    assert f"{name} step 10:" not in out and f"{name} step 20:" in out  # resumed from the checkpoint, not from 0

    # Checkpoints (keep 2), metrics and TensorBoard events of the resumed path.
    assert sorted(os.listdir(first / "checkpoints"))[:2] == ["10", "20"]
    assert (first / "metrics.csv").read_text().splitlines()[0].startswith("step,loss")
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(first / "tensorboard"))

    with open(tmp_path / "table" / "cifar10_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by = {(r["path"], r["solver"]): r for r in rows}
    for p in paths:
        assert (tmp_path / "table" / f"cifar10_{p}_samples.png").stat().st_size > 500
        for solver, nfe in (("euler1", 1), ("euler2", 2), ("dopri5", None)):
            r = by[(p, solver)]
            assert r["step"] == "20" and np.isfinite(float(r["fid"])) and float(r["fid"]) >= 0, r
            assert nfe is None and int(r["nfe"]) > 2 or int(r["nfe"]) == nfe, r
            assert float(r["kinetic_energy_per_dim"]) > 0, r
            if p in WITH_DENSITY:
                # Data dequantised into bins of width 2/256: bits/dim of any density is finite and positive.
                assert 0 < float(r["bits_per_dim"]) < 100 and float(r["bits_per_dim_se"]) > 0, r
            else:
                assert r.get("bits_per_dim", "") == "", r
    edm = [r for r in rows if r["solver"].startswith("edm")]
    assert {(r["path"], r["solver"], r["nfe"]) for r in edm} == {("hgf", "edm_heun18", "35")}  # 2N − 1, N = 18

    md = (tmp_path / "table" / "cifar10_table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| path |"))
    for column in ("FID euler1", "FID euler2", "FID dopri5 (NFE)", "FID edm_heun18 (NFE)", "bits/dim", "KE/dim"):
        assert column in header, header
    for p in paths:
        assert f"| {p} |" in md
    hgf = next(line for line in md.splitlines() if line.startswith("| hgf |"))
    assert "(35)" in hgf and "±" in hgf
    assert "| real test images |" in md
