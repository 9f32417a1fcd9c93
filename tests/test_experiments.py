"""The experiment layer: registry errors, `train_and_evaluate` on a tiny config, the CLI and the main job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import registry
from experiments.configs import tiny
from experiments.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("getter,kind", [(registry.get_path, "path"), (registry.get_dataset, "dataset"),
                                         (registry.get_solver, "solver"), (registry.get_time_sampler, "time sampler")])
def test_unknown_names_are_clear_errors(getter, kind):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; known: "):
        getter("nope")


def test_every_toy_table_path_builds():
    assert set(registry.TOY_TABLE_PATHS) <= set(registry.PATHS)
    for name in registry.TOY_TABLE_PATHS:
        registry.get_path(name)


def test_train_and_evaluate_smoke(tmp_path):
    config = tiny.get_config()
    config.path = "vp"
    results = train_and_evaluate(config, str(tmp_path), progress=False)
    assert (tmp_path / "metrics.csv").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["path"] == "vp"
    assert results["euler4"]["nfe"] == 4 and results["euler4"]["nonfinite"] == 0
    assert results["dopri5"]["nfe"] > 6
    assert results["kinetic_energy"] > 0


def test_steps_must_be_a_multiple_of_steps_per_call(tmp_path):
    config = tiny.get_config()
    config.train.steps = 30
    with pytest.raises(ValueError, match="multiple"):
        train_and_evaluate(config, str(tmp_path), progress=False)


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_command_line_entry_point_with_overrides(tmp_path):
    out = _run("experiments.main", "--config", "experiments/configs/tiny.py", "--workdir", str(tmp_path),
               "--config.path=cosine", "--config.dataset=8gaussians")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["config"]["dataset"] == "8gaussians"
    bad = _run("experiments.main", "--config", "experiments/configs/tiny.py", "--workdir", str(tmp_path),
               "--config.path=nope")
    assert bad.returncode != 0 and "unknown path 'nope'" in bad.stderr


def test_main_job_writes_table_csv_and_plot(tmp_path):
    out = _run("experiments.toy_table", "--out", str(tmp_path), "--steps", "20", "--paths", "cond_ot,vp",
               "--datasets", "moons")
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "toy_table.md").read_text()
    assert "| cond_ot | moons | euler100 |" in table and "| vp | moons | dopri5 |" in table
    assert (tmp_path / "toy_table.csv").exists() and (tmp_path / "toy_samples.png").stat().st_size > 1000
    assert "table:" in out.stdout


def test_compare_writes_table_csv_and_plots(tmp_path):
    from experiments import compare

    budget = dict(steps=20, seeds=2, num_samples=64, loglik_samples=8, mnist_steps=0, mnist_seeds=0)
    rows, grids = compare.run_toys(["cond_ot"], ["grid_dirac"], budget, str(tmp_path), progress=False)
    assert len(rows) == 2 * (2 * len(compare.EULER_STEPS) + 1)
    assert {r["nfe"] for r in rows if r["solver"] == "heun"} == {2 * max(s // 2, 1) for s in compare.EULER_STEPS}
    assert all(r["log_likelihood"] is not None and np.isfinite(r["log_likelihood"]) for r in rows)
    md = compare.write_outputs(rows, grids, str(tmp_path), "test")
    text = open(md).read()
    assert "## grid_dirac" in text and "| cond_ot |" in text and "±" in text
    assert (tmp_path / "compare.csv").exists() and (tmp_path / "compare_grid_dirac.png").exists()


def test_image_training_smoke_writes_fid_and_grid(tmp_path):
    from experiments.configs import mnist_cond_ot
    from experiments.train_images import train_and_evaluate as train_images

    config = mnist_cond_ot.get_config()
    config.train.steps, config.train.steps_per_call = 20, 10
    config.eval.at_steps, config.eval.num_samples, config.eval.num_steps = (20,), 32, 2
    config.eval.cache_dir, config.eval.classifier_steps = str(tmp_path / "cache"), 100
    rows = train_images(config, str(tmp_path / "run"), progress=False)
    assert rows[-1]["step"] == 20 and np.isfinite(rows[-1]["loss"]) and rows[-1]["mnist_fid"] > 0
    assert (tmp_path / "run" / "samples_20.png").exists() and (tmp_path / "run" / "metrics.csv").exists()
