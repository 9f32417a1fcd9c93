"""docs/adding_a_path.md is a real example: its four code blocks give a path the contract tests accept and a
config that trains through the experiment layer."""

from __future__ import annotations

import os
import re
import types

import jax
import pytest

import tests.test_paths_contract as contract
from experiments import registry
from fm_jax import paths as P
from tests.all_paths import PathCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks() -> dict[str, str]:
    text = open(os.path.join(ROOT, "docs", "adding_a_path.md")).read()
    return dict(re.findall(r"```python file=(\S+)\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="module")
def case(monkeypatch_module):
    blocks = _blocks()
    assert set(blocks) == {"fm_jax/paths/trig.py", "fm_jax/paths/__init__.py", "tests/all_paths.py",
                           "experiments/configs/moons_trig.py"}
    module = types.ModuleType("fm_jax.paths.trig")
    exec(compile(blocks["fm_jax/paths/trig.py"], "fm_jax/paths/trig.py", "exec"), module.__dict__)
    # The export line, run in the package namespace with the new module importable as `.trig`.
    monkeypatch_module.setitem(__import__("sys").modules, "fm_jax.paths.trig", module)
    exec(compile(blocks["fm_jax/paths/__init__.py"], "fm_jax/paths/__init__.py", "exec"),
         {"__name__": "fm_jax.paths", "__package__": "fm_jax.paths"}, P.__dict__)
    monkeypatch_module.setattr(P, "TrigInterpolantPath", P.__dict__["TrigInterpolantPath"], raising=False)
    entry = eval(blocks["tests/all_paths.py"].strip().rstrip(","), {"PathCase": PathCase, "P": P})
    assert entry.name == "trig"
    return entry


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_new_path_passes_the_contract_tests(case):
    contract.test_shapes_and_dtypes(case)
    contract.test_same_key_same_output_and_jit_matches_eager(case)
    contract.test_vmap_matches_loop(case)
    contract.test_t1_gives_the_data(case)
    contract.test_t0_law_matches_source_by_moments(case)
    for t in (0.2, 0.55, 0.9):
        contract.test_target_is_time_derivative_of_the_path(case, t)
    contract.test_no_retracing_when_hyper_parameters_change(case)
    contract.test_gradients_flow_through_the_target(case)
    contract.test_time_outside_unit_interval_is_rejected(case)


def test_the_new_config_trains_through_the_experiment_layer(case, tmp_path):
    from experiments.train import train_and_evaluate

    namespace: dict = {}
    exec(compile(_blocks()["experiments/configs/moons_trig.py"], "moons_trig.py", "exec"), namespace)
    config = namespace["get_config"]()
    assert isinstance(registry.get_path(config.path.name, **config.path.kwargs), P.TrigInterpolantPath)
    config.model.hidden, config.model.depth, config.train.steps, config.train.steps_per_call = 32, 2, 20, 10
    config.eval.num_samples, config.eval.w2_samples, config.eval.step_counts = 128, 128, (4,)
    config.eval.adaptive_solver, config.eval.trajectory_steps, config.eval.plots = "", 4, False
    config.log.tensorboard = False
    results = train_and_evaluate(config, str(tmp_path), progress=False)
    assert results["euler4"]["nonfinite"] == 0 and jax.numpy.isfinite(results["final_loss"])
