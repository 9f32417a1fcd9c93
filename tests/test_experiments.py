"""The experiment layer: registry errors, config validation, `train_and_evaluate`, the CLI, the main job."""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import common, registry
from experiments.configs import default, tiny
from experiments.configs.toy_paths import PATH_SETTINGS, TOY_TABLE_PATHS
from experiments.train import train_and_evaluate, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("getter,kind", [(registry.get_path, "path"), (registry.get_dataset, "dataset"),
                                         (registry.get_solver, "solver"), (registry.get_time_sampler, "time sampler")])
def test_unknown_names_are_clear_errors(getter, kind):
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; known: "):
        getter("nope")


def test_unknown_path_keyword_is_a_clear_error():
    with pytest.raises(ValueError, match="path 'kac' does not accept keyword arguments \\['sigma'\\]"):
        registry.get_path("kac", sigma=1.0)


def test_every_toy_path_setting_builds_with_its_config_kwargs():
    assert set(TOY_TABLE_PATHS) <= set(PATH_SETTINGS)
    for label, (name, kwargs) in PATH_SETTINGS.items():
        path = registry.get_path(name, **kwargs)
        for field, value in kwargs.items():  # the config's values reach the object
            leaf = getattr(path, field, None) or getattr(getattr(path, "schedule", None), field, None)
            if isinstance(value, float) and leaf is not None:
                assert float(np.asarray(leaf)) == pytest.approx(value), (label, field)


def test_registry_holds_no_hyper_parameter_values():
    # Every entry is a class or a factory whose arguments come from the config: no literal numbers in the
    # registry's entries (numbers only appear in config files).
    src = open(os.path.join(ROOT, "experiments", "registry.py")).read()
    body = re.sub(r"#.*|\"\"\".*?\"\"\"", "", src.split("PATHS: dict", 1)[1], flags=re.S)  # code, not comments
    assert not re.findall(r"=\s*-?\d+\.?\d*(?:e-?\d+)?[,)]", body), "numeric keyword in a registry entry"


@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", 0, "train.batch_size must be a positive integer"),
    ("train.steps_per_call", 0, "train.steps_per_call must be a positive integer"),
    ("train.steps", 30, "multiple of train.steps_per_call"),
    ("train.learning_rate", 0.0, "learning_rate must be > 0"),
    ("eval.solver", "eulr", "unknown solver 'eulr'"),
    ("eval.adaptive_solver", "dopri", "unknown solver 'dopri'"),
])
def test_bad_config_values_fail_before_training(field, value, message):
    config = tiny.get_config()
    block, name = field.split(".")
    config[block][name] = value
    with pytest.raises(common.ConfigError, match=message):
        validate(config)


def test_train_and_evaluate_smoke_and_resume(tmp_path):
    config = tiny.get_config("vp")
    results = train_and_evaluate(config, str(tmp_path), progress=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss") and [int(r.split(",")[0]) for r in lines[1:]] == [20, 40]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["path"]["name"] == "vp"
    assert results["euler4"]["nfe"] == 4 and results["euler4"]["nonfinite"] == 0
    assert results["dopri5"]["nfe"] > 6
    assert results["kinetic_energy"] > 0
    assert sorted(os.listdir(tmp_path / "checkpoints"))[:2] == ["20", "40"]
    # A longer budget resumes from step 40 and appends to the curve, header kept.
    config.train.steps = 60
    again = train_and_evaluate(config, str(tmp_path), progress=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in lines[1:]] == [20, 40, 60] and lines[0].startswith("step,")
    assert again["euler4"]["nonfinite"] == 0


@pytest.mark.parametrize("step_counts", [(4, 8), (4,)], ids=["reused", "own_run"])
def test_trajectory_metrics_come_from_the_euler_run_with_that_many_steps(step_counts):
    import jax

    import fm_jax as fj
    from experiments.train import evaluate, init_model

    config = tiny.get_config("form")  # phase space: the trajectories are read out to positions
    config.eval.step_counts, config.eval.adaptive_solver, config.eval.num_samples = step_counts, "", 64
    path = common.build_path(config)
    apply, params = init_model(config, path, seed=0)
    reference = np.random.default_rng(0).normal(size=(64, 2))
    got = evaluate(config, path, apply, params, reference)
    # Euler-8 trajectories of every sample (the scored run's own, or a run of the same key and size) ...
    res = fj.sample(jax.random.key(config.seed + 10_000), path, apply, params, 64, (2,),
                    solver=registry.get_solver("euler"), num_steps=8, save_trajectory=9)
    traj = jax.vmap(path.readout)(res.trajectory)
    np.testing.assert_allclose(got["kinetic_energy"], fj.metrics.kinetic_energy(traj, res.ts), rtol=1e-5)
    np.testing.assert_allclose(got["straightness"], fj.metrics.straightness(traj, res.ts), rtol=1e-5)
    np.testing.assert_array_equal(got["_samples"], res.samples)
    assert got["_trajectory"].shape == (9, 64, 2) and "_trajectory" not in got.get("euler8", {})
    if 8 in step_counts:  # ... and the scored samples are that run's last state
        assert got["euler8"]["nfe"] == 8 and "_ts" not in got["euler8"]


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    import fm_jax as fj

    config = tiny.get_config()
    config.train.learning_rate = 1e38  # parameters overflow after the first update: every later step is skipped
    config.train.max_bad_steps = 20
    config.train.warmup_steps = 0
    # K = 20 steps a call: step 1 is good, 2..20 bad (19 < 20), 2..40 bad (39): the stop comes at step 40.
    with pytest.raises(fj.training.DivergenceError, match=r"training diverged: the last 39 steps \(to step 40\)"):
        train_and_evaluate(config, str(tmp_path), progress=False)
    assert [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()] == []  # nothing saved in the streak
    assert [r.split(",")[0] for r in (tmp_path / "metrics.csv").read_text().splitlines()] == ["step", "20", "40"]


def test_make_optimizer_refuses_a_non_positive_learning_rate():
    import fm_jax as fj

    for lr in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
            fj.make_optimizer(lr)


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_command_line_entry_point_with_overrides(tmp_path):
    out = _run("experiments.main", "--config", "experiments/configs/tiny.py", "--workdir", str(tmp_path),
               "--config.path.name=cosine", "--config.dataset.name=8gaussians", "--config.eval.step_counts=(2, 3)",
               "--config.eval.adaptive_solver=")
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["dataset"]["name"] == "8gaussians" and set(saved["results"]) >= {"euler2", "euler3"}
    assert "orbax" not in out.stderr.lower() and len(out.stderr.splitlines()) < 10, out.stderr[-2000:]


@pytest.mark.parametrize("flag,message", [
    ("--config.path.name=nope", "error: path: unknown path 'nope'"),
    ("--config.train.nope=1", "error: unknown config field"),
    ("--config.train.batch_size=0", "error: train.batch_size must be a positive integer"),
    ("--config.train.steps_per_call=0", "error: train.steps_per_call must be a positive integer"),
    ("--config.eval.solver=eulr", "error: eval: unknown solver 'eulr'"),
])
def test_command_line_errors_are_one_line(tmp_path, flag, message):
    out = _run("experiments.main", "--config", "experiments/configs/tiny.py", "--workdir", str(tmp_path), flag)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_help_lists_every_config_field_with_its_value(tmp_path):
    from experiments.configs import toy_table

    out = _run("experiments.toy_table", "--workdir", str(tmp_path), "--config.train.steps=7", "--help", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {line.strip().split("=")[0] for line in out.stdout.splitlines() if line.startswith("  --config.")}
    fields = {f"--config.{k}" for k in _field_names(toy_table.get_config().to_dict())}
    assert listed == fields, (listed ^ fields)
    assert "  --config.train.steps=7" in out.stdout  # the value after the other flags on the line
    assert f"  --config.model.hidden={toy_table.get_config().model.hidden!r}" in out.stdout
    assert "--workdir" in out.stdout and "--helpfull" in out.stdout and not os.listdir(tmp_path)


def _field_names(tree, prefix=""):
    out = []
    for name, value in tree.items():
        out += _field_names(value, f"{prefix}{name}.") if isinstance(value, dict) and value else [prefix + name]
    return out


def test_main_job_writes_table_csv_and_plot(tmp_path):
    out = _run("experiments.toy_table", "--workdir", str(tmp_path), "--config.train.steps=20",
               "--config.train.steps_per_call=10", "--config.table.paths=('cond_ot', 've')",
               "--config.table.datasets=('moons',)", "--config.eval.step_counts=(4, 8)", "--config.table.workers=2",
               "--config.eval.num_samples=300", "--config.eval.w2_samples=300", "--config.eval.trajectory_steps=8")
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "toy_table.md").read_text()
    assert "| cond_ot | moons | euler4 |" in table and "| ve | moons | euler8 |" in table
    assert "dopri5" not in table  # the main job has no adaptive run
    assert "| data vs data | moons | data |" in table and "moons: W2 euler4 / euler8 · SW2 · euler8 ÷ floor" in table
    assert (tmp_path / "toy_table.csv").exists() and (tmp_path / "toy_samples.png").stat().st_size > 1000
    assert "table:" in out.stdout


def test_toy_w2_is_the_mean_over_disjoint_blocks_with_its_standard_error():
    import fm_jax as fj
    from experiments.train import distances

    rng = np.random.default_rng(0)
    x, ref = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 0.5
    e = default.get_config().eval
    e.w2_samples = 100
    got = distances(x, ref, e)
    blocks = [fj.metrics.wasserstein2(x[i:i + 100], ref[i:i + 100]) for i in (0, 100, 200)]
    assert got["w2"] == pytest.approx(np.mean(blocks), rel=1e-12)
    assert got["w2_se"] == pytest.approx(np.std(blocks, ddof=1) / np.sqrt(3), rel=1e-12)
    e.w2_samples = 300  # one block: no standard error
    one = distances(x, ref, e)
    assert one["w2"] == pytest.approx(fj.metrics.wasserstein2(x, ref), rel=1e-12) and np.isnan(one["w2_se"])


# -- every config field is read by some code ---------------------------------------------------------------------

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
                      if not os.path.basename(p).startswith(("_", "toy_paths", "image_base")))


# Mappings handed over whole (keyword arguments of a factory, XLA compiler options per benchmark variant): the
# mapping is read, its keys are the callee's.
WHOLE_MAPPINGS = ("kwargs", "xla_variants")


def _leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items") and key not in WHOLE_MAPPINGS:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _code():
    files = [p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))] + \
        [os.path.join(ROOT, "fm_jax", "training.py")]
    return "\n".join(open(p).read() for p in files)


@pytest.mark.parametrize("filename", CONFIG_FILES, ids=os.path.basename)
def test_every_config_field_is_read(filename):
    name = os.path.splitext(os.path.basename(filename))[0]
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    code = _code()
    unread = []
    for leaf in _leaves(config):
        field = leaf.rsplit(".", 1)[-1]
        # read as attribute (`e.solver`), item (`t["steps"]`, `m[field]` over a listed tuple) or via `get`
        patterns = [rf"\.{field}\b", rf"\[\"{field}\"\]", rf"get\(\"{field}\"", rf"\"{field}\"[,)]"]
        if not any(re.search(p, code) for p in patterns):
            unread.append(leaf)
    assert not unread, f"{name}: config fields no code reads: {unread}"


def test_unread_field_check_can_fail():
    config = default.get_config()
    config.train.some_unused_setting = 3
    code = _code()
    assert not re.search(r"\.some_unused_setting\b", code)


# The smallest image run: the MNIST config, a one-level 8-channel U-Net, 10 steps, FID of 16 samples at Euler 2.
_SMALL_IMAGE_RUN = """
from experiments.configs import mnist_cond_ot
config = mnist_cond_ot.get_config()
config.model.update(dict(channels=8, channel_mult=(1,), attention_resolutions=(), num_heads=1))
config.train.steps, config.train.steps_per_call, config.train.checkpoint_every = 10, 10, 10
config.eval.at_steps, config.eval.num_samples, config.eval.step_counts = (10,), 16, (2,)
config.eval.cache_dir, config.eval.classifier_steps = CACHE, 20
config.log.tensorboard = False
"""


def test_image_training_smoke_writes_mnist_fid_and_grid(tmp_path):
    # The MNIST-classifier branch of the image trainer at the smallest size (the CIFAR-10 pipeline, checkpoints,
    # SIGKILL and resume, TensorBoard and the table are tests/test_image_pipeline.py).
    from experiments.train_images import train_and_evaluate as train_images

    scope = {"CACHE": str(tmp_path / "cache")}
    exec(_SMALL_IMAGE_RUN, scope)
    config = scope["config"]
    rows = train_images(config, str(tmp_path / "run"), progress=False)
    assert [r["step"] for r in rows] == [10] and np.isfinite(rows[-1]["loss"]) and rows[-1]["mnist_fid"] > 0
    assert rows[-1]["solver"] == "euler2" and rows[-1]["nfe"] == 2 and rows[-1]["kinetic_energy_per_dim"] > 0
    assert "bits_per_dim" not in rows[-1]  # eval.nll_samples = 0
    assert (tmp_path / "run" / "samples_10.png").exists()
    # Relaunching a finished run restores it and keeps its evaluation rows.
    assert [r["step"] for r in train_images(config, str(tmp_path / "run"), progress=False)] == [10]

    # The same run on the CPU split into two data-parallel devices (`train.host_devices = 2`; the command line
    # splits before JAX starts, so: a fresh process): the same loss and FID up to float round-off.
    script = "\n".join([
        "import json, jax", f"CACHE = {scope['CACHE']!r}", _SMALL_IMAGE_RUN, "config.train.host_devices = 2",
        "from experiments.train_images import start_processes, train_and_evaluate",
        "start_processes(config)",
        f"row = train_and_evaluate(config, {str(tmp_path / 'run2')!r}, progress=False)[-1]",
        "print(json.dumps({'devices': jax.device_count(), 'loss': row['loss'], 'fid': row['mnist_fid']}))"])
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")},
                              "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout.splitlines()[-1])
    assert two["devices"] == 2
    np.testing.assert_allclose([two["loss"], two["fid"]], [rows[-1]["loss"], rows[-1]["mnist_fid"]], rtol=1e-4)


def test_compare_writes_table_csv_and_plots(tmp_path, monkeypatch):
    from experiments import compare
    from experiments.configs import compare as compare_config

    config = compare_config.get_config("quick")
    config.train.steps, config.train.steps_per_call, config.table.seeds = 20, 10, 2
    config.table.paths, config.table.datasets, config.table.loglik_samples = ("cond_ot",), ("grid_dirac",), 8
    config.eval.num_samples, config.eval.step_counts = 64, (2, 4)
    config.table.workers = 1  # in this process (the pool has its own tests)
    rows, grids = compare.run_toys(config, str(tmp_path), progress=False)
    # Every cell checkpoints under runs/: relaunched, it restores the trained state and scores it the same.
    assert sorted(os.listdir(tmp_path / "runs")) == ["cond_ot-grid_dirac-s0", "cond_ot-grid_dirac-s1"]
    again, again_grids = compare.run_toys(config, str(tmp_path), progress=False)
    # A finished cell is read back from its cell.json (its training time too: nothing was run again) ...
    assert again == rows and (tmp_path / "runs" / "cond_ot-grid_dirac-s0" / "cell.json").exists()
    pictures = grids["grid_dirac"]["cond_ot"]
    assert sorted(pictures) == ["dopri5adaptive", "euler2", "euler4", "trajectory"]
    assert pictures["euler4"].shape == (64, 2) and pictures["trajectory"].shape == (101, compare.TRAJECTORY_POINTS, 2)
    for k in pictures:
        np.testing.assert_array_equal(again_grids["grid_dirac"]["cond_ot"][k], pictures[k])
    # ... unless a setting that decides its rows changed: then it is evaluated again from its checkpoint.
    config.eval.num_samples = 48
    changed, _ = compare.run_toys(config, str(tmp_path), progress=False)
    assert [r["w2"] for r in changed] != [r["w2"] for r in rows] and changed[0]["train_seconds"] == 0
    config.eval.num_samples = 64
    # --start_fresh (which the pool's workers learn from the environment) trains and evaluates every cell again.
    monkeypatch.setattr(common, "START_FRESH", True)
    fresh, _ = compare.run_toys(config, str(tmp_path), progress=False)
    assert all(r["train_seconds"] > 0 for r in fresh) and [r["w2"] for r in fresh] == [r["w2"] for r in rows]
    monkeypatch.setattr(common, "START_FRESH", False)
    assert len(rows) == 2 * (2 * 2 + 1)
    assert {r["nfe"] for r in rows if r["solver"] == "heun"} == {2, 4}
    assert all(r["log_likelihood"] is not None and np.isfinite(r["log_likelihood"]) for r in rows)
    floor = compare.floor_rows(config)
    assert [(r["path"], r["seed"]) for r in floor] == [("data vs data", 0), ("data vs data", 1)]
    assert all(r["w2"] > 0 for r in floor)
    md = compare.write_outputs(rows + floor, grids, str(tmp_path), "test", config.eval.step_counts)
    text = open(md).read()
    assert "## grid_dirac" in text and "| cond_ot |" in text and "±" in text and "Floor (data vs data" in text
    assert "| data vs data |" not in text  # the floor is a line above the tables, not a path row
    for name in ("compare.csv", "compare_grid_dirac.png", "compare_grid_dirac_mmd.png",
                 "compare_samples_grid_dirac.png", "compare_trajectories_grid_dirac.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_start_fresh_reaches_spawned_workers_through_the_environment():
    code = "from experiments import common; print(common.START_FRESH)"
    env = {**os.environ, common.START_FRESH_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-500:]
    env.pop(common.START_FRESH_ENV)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-500:]


def test_kac_reference_prior_is_kac_noise_plus_fresh_data():
    # The reference 2-D setting (f ≡ 1): z_0 = K_T + x', x' a fresh draw of the 3×3 grid; per coordinate the
    # variance is Var K_T + Var x' = kac.variance(T, a, c) + (2/3 + std²), the mean 0.
    import jax

    from fm_jax import kac

    path = registry.get_path("kac_data_prior", a=9.0, c=3.0, T=1.0, std=0.01)
    n = 40_000
    z = np.asarray(jax.vmap(lambda k: path.sample_source(k, (2,)))(jax.random.split(jax.random.key(0), n)))
    var = float(kac.variance(1.0, 9.0, 3.0)) + 2.0 / 3.0 + 1e-4
    # |z| <= c T + 1 + 5 std bounds the fourth moment: 5 standard errors of the sample variance and mean.
    bound = (3.0 + 1.05) ** 2
    assert np.all(np.abs(z.var(0) - var) < 5 * np.sqrt((bound * var - var**2) / n)), (z.var(0), var)
    assert np.all(np.abs(z.mean(0)) < 5 * np.sqrt(var / n))
    # The conditional law is the Kac path's with f ≡ 1: z_t - x1 = K_s has mean 0 at every t.
    x1 = np.ones((n, 2), np.float32)
    zt = jax.vmap(path.sample_conditional, in_axes=(0, 0, None))(jax.random.split(jax.random.key(1), n), x1, 0.5)
    assert np.all(np.abs(np.asarray(zt.z_t - x1).mean(0)) < 5 * np.sqrt(float(kac.variance(0.5, 9.0, 3.0)) / n))


def test_paper_skeleton_resumes_exactly_and_does_not_retrain_a_finished_run(tmp_path):
    """`common.train_seeds` (the paper scripts' trainer): 6 steps, then a relaunch to 7 (restored at 6, one
    remainder step) equals 7 straight steps bit for bit, and a finished run is restored, not retrained."""
    import jax
    import jax.numpy as jnp
    import optax

    data = jnp.stack([jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1.0, 2.0, 8)])  # two seeds' full batches

    def loss(params, key, x):
        noise = 0.1 * jax.random.normal(key, x.shape)  # the step key matters: a wrong key after resume shows
        return jnp.mean((params["w"] * x + params["b"] + noise - 1.0) ** 2)

    def init(key):
        return {"w": jax.random.normal(key, ()), "b": jnp.zeros(())}

    keys = jax.random.split(jax.random.key(0), 4)
    adam = optax.adam(0.1)

    def train(steps, workdir):
        states = common.init_seed_states(init, keys[:2], keys[2:], adam)
        return common.train_seeds(states, loss, adam, data, steps, steps_per_call=3, workdir=workdir,
                                  name="toy", config={"lr": 0.1})

    straight, row = train(7, None)
    train(6, str(tmp_path))
    resumed, resumed_row = train(7, str(tmp_path))
    assert int(resumed.step) == 7 and resumed_row == pytest.approx(row | {"seconds": resumed_row["seconds"]})
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = (tmp_path / "runs" / "toy" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in metrics] == ["step", "3", "6", "7"]
    again, again_row = train(7, str(tmp_path))  # finished: restored, and its last row read back
    np.testing.assert_array_equal(np.asarray(again.params["w"]), np.asarray(resumed.params["w"]))
    assert again_row["step"] == 7 and again_row["loss"] == pytest.approx(resumed_row["loss"], rel=1e-6)
    assert len(metrics) == len((tmp_path / "runs" / "toy" / "metrics.csv").read_text().splitlines())


def test_missing_inception_weights_are_a_one_line_error_before_training(tmp_path):
    from experiments.configs import cifar10_cond_ot
    from experiments.train_images import validate as validate_images

    config = cifar10_cond_ot.get_config()
    config.eval.inception_weights = str(tmp_path / "missing.npz")
    with pytest.raises(common.ConfigError) as err:
        validate_images(config)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "missing.npz") in message
    assert "python -m fm_jax.models.convert_inception" in message
