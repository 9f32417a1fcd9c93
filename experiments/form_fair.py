"""A ForM comparison that tests the method: same inputs, same budget, a generator outside every model class.

    python -m experiments.form_fair --config experiments/configs/form_fair.py --config.seeds=3

Training runs on the shared skeleton (`common.train_seeds`: all seeds at once, checkpointed under
`<workdir>/runs/<dataset>_<setting>_<method>`, resumed on relaunch; finished runs are restored, not retrained).

The paper's particle benchmarks (and `experiments/form_paper.py`'s corrected variant) favour ForM by
construction: its sampler is the data generator, its model class (force magnitudes as functions of the step)
contains the true forces, and it alone is handed each test point's true initial velocity. Here:

* data: `fm_jax.data.relativistic_sims.simulate_field`, natural units c = m = T = 1; the force
  F(x, v) = -k x + b (1 + tanh(x_1) / 2) rot90(v) - beta v depends on position and velocity and is integrated with
  50 fine momentum steps per recorded step, so no 10-step sampler reproduces the generator; the 500 training
  trajectories are observed with Gaussian noise on every position and velocity (`observe`); the test end points
  are clean;
* two settings, every method given the same test inputs: `with_v0` (x0 and v0; the first-order models take v0 as
  an extra input) and `without_v0` (x0 only; the second-order models learn v0 from x0 with one more network);
* one budget: the same iterations, Adam schedule, width and depth for every network, full batch over all steps.

Methods: O1 (u(x, t) regresses v_k, Euler sampler), O1+O2 (u1 regresses v_k, u2(u1, x, t) regresses a_k, sampler
x + u1 dt + u2 dt^2 / 2), Newton (second-order force matching without relativity: F(x, v, t) regresses m a_k,
kick-drift), ForM (force magnitudes F_par, F_perp(x, v, t) regress the momentum change (p_{k+1} - p_k) / dt split
along v_k, sampled by `fm_jax.relativistic.relativistic_step`) and ForM-t (the paper's model class:
magnitudes that depend on t only). Metric: mean paired end-point L2 in units of c dt (the paper's unit), mean ±
std over seeds. Reference rows (no training): the ForM sampler with the exact force field and exact v0 ("exact
forces, 10 steps": its discretisation error, not a floor: a model fitted to step-averaged forces can beat it),
the same from v0's x0-predictable part, and no motion.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from fm_jax import relativistic as rel
from fm_jax.data import relativistic_sims as sims

C = sims.FIELD_C
M = sims.MASS
K = sims.NUM_STEPS
DT = 1.0 / K
UNIT = C * DT  # the paper's unit c dt
NAMES = {"o1": "O1 (first-order FM)", "o12": "O1+O2 (first+second-order FM)",
         "newton": "Newton (second-order force matching, no speed limit)",
         "form": "ForM (paper parameterisation: F_par, F_perp of x, v, t)",
         "form_vec": "ForM, force vector F(x, v, t)", "form_t": "ForM-t (paper's class: F_par, F_perp of t only)"}


# ----------------------------------------------------------------------------------------------- networks
def init_mlp(key, n_in, n_out, hidden, depth):
    sizes = [n_in] + [hidden] * depth + [n_out]
    params = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros((b,))))
    return params


def mlp(params, h):
    for w, b in params[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def n_params(params):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


# ----------------------------------------------------------------------------------------------- methods
# Each method: init(key) -> params; loss(params, data) -> scalar, data = noisy Trajectories (positions (n, K+1, 2));
# sample(params, x0, v0) -> end points (n, 2) (v0 ignored in the setting without it).


def _tcol(k, n):
    return jnp.full((n, 1), k * DT)


def first_order(with_v0: bool, second: bool, hidden: int, depth: int):
    n_in = 3 + (2 if with_v0 else 0)

    def init(key):
        k1, k2 = jax.random.split(key)
        p = {"u1": init_mlp(k1, n_in, 2, hidden, depth)}
        if second:
            p["u2"] = init_mlp(k2, n_in + 2, 2, hidden, depth)
        return p

    def inputs(x, k, v0):
        parts = [x, _tcol(k, x.shape[0])] + ([v0] if with_v0 else [])
        return jnp.concatenate(parts, axis=1)

    def predict(params, x, k, v0):
        h = inputs(x, k, v0)
        u1 = mlp(params["u1"], h)
        u2 = mlp(params["u2"], jnp.concatenate([u1, h], axis=1)) if second else None
        return u1, u2

    def loss(params, data):
        v0 = data.velocities[:, 0]

        def per_step(k):
            u1, u2 = predict(params, data.positions[:, k], k, v0)
            out = jnp.mean(jnp.sum((u1 - data.velocities[:, k]) ** 2, -1))
            if second:
                out = out + jnp.mean(jnp.sum((u2 - data.accelerations[:, k]) ** 2, -1))
            return out

        return jnp.mean(jax.vmap(per_step)(jnp.arange(K)))

    def sample(params, x0, v0):
        def step(x, k):
            u1, u2 = predict(params, x, k, v0)
            x = x + u1 * DT + (0.5 * u2 * DT**2 if second else 0.0)
            return x, None

        return jax.lax.scan(step, x0, jnp.arange(K))[0]

    return init, loss, sample


def second_order(with_v0: bool, relativistic: bool, time_only: bool, hidden: int, depth: int, vector: bool = False):
    """Newton / ForM / ForM-t: a force network driving the (x, v) or (x, p) state; plus a v0 network without v0."""
    n_in = 1 if time_only else 5

    def init(key):
        k1, k2 = jax.random.split(key)
        p = {"force": init_mlp(k1, n_in, 2, hidden, depth)}
        if not with_v0:
            p["v0"] = init_mlp(k2, 2, 2, hidden, depth)
        return p

    def force_out(params, x, v, k):
        t = _tcol(k, x.shape[0])
        return mlp(params["force"], t if time_only else jnp.concatenate([x, v, t], axis=1))

    def initial_velocity(params, x0):
        out = mlp(params["v0"], x0)
        # ForM predicts the initial momentum, so its v0 obeys the speed limit too.
        return rel.velocity_from_momentum(out, C, M) if relativistic else out

    def loss(params, data):
        v0 = data.velocities[:, 0]

        def per_step(k):
            x, v = data.positions[:, k], data.velocities[:, k]
            out = force_out(params, x, v, k)
            if relativistic and vector:
                target = (rel.momentum_from_velocity(data.velocities[:, k + 1], C, M)
                          - rel.momentum_from_velocity(v, C, M)) / DT
            elif relativistic:
                target = jnp.stack([data.f_par[:, k], data.f_perp[:, k]], axis=-1)
            else:
                target = M * data.accelerations[:, k]
            return jnp.mean(jnp.sum((out - target) ** 2, -1))

        total = jnp.mean(jax.vmap(per_step)(jnp.arange(K)))
        if not with_v0:
            if relativistic:
                total = total + jnp.mean(jnp.sum((mlp(params["v0"], data.positions[:, 0])
                                                  - rel.momentum_from_velocity(v0, C, M)) ** 2, -1))
            else:
                total = total + jnp.mean(jnp.sum((initial_velocity(params, data.positions[:, 0]) - v0) ** 2, -1))
        return total

    def sample(params, x0, v0):
        if not with_v0:
            v0 = initial_velocity(params, x0)
        if relativistic:
            def step(carry, k):
                x, p = carry
                v = rel.velocity_from_momentum(p, C, M)
                f = force_out(params, x, v, k)
                force = f if vector else rel.force_from_magnitudes(f[:, 0], f[:, 1], v)
                return rel.relativistic_step(x, p, force, DT, C, M), None

            return jax.lax.scan(step, (x0, rel.momentum_from_velocity(v0, C, M)), jnp.arange(K))[0][0]

        def step(carry, k):
            x, v = carry
            v_new = v + force_out(params, x, v, k) / M * DT
            return (x + 0.5 * (v + v_new) * DT, v_new), None

        return jax.lax.scan(step, (x0, v0), jnp.arange(K))[0][0]

    return init, loss, sample


def make_method(name: str, with_v0: bool, hidden: int, depth: int):
    if name == "o1":
        return first_order(with_v0, False, hidden, depth)
    if name == "o12":
        return first_order(with_v0, True, hidden, depth)
    if name == "newton":
        return second_order(with_v0, False, False, hidden, depth)
    if name == "form":
        return second_order(with_v0, True, False, hidden, depth)
    if name == "form_vec":
        return second_order(with_v0, True, False, hidden, depth, vector=True)
    if name == "form_t":
        return second_order(with_v0, True, True, hidden, depth)
    raise ValueError(f"unknown method {name!r}; known: {', '.join(NAMES)}")


# ----------------------------------------------------------------------------------------------- data and runs
def make_data(key, dataset: str, cfg):
    k_tr, k_te, k_obs = jax.random.split(key, 3)
    x0, v0 = sims.field_initial(dataset, k_tr, cfg.n_train)
    train = sims.observe(sims.simulate_field(x0, v0, substeps=cfg.substeps), k_obs,
                         position_noise=cfg.position_noise, velocity_noise=cfg.velocity_noise)
    x0t, v0t = sims.field_initial(dataset, k_te, cfg.n_test)
    test = sims.simulate_field(x0t, v0t, substeps=cfg.substeps)
    return train, test


def _optimizer(cfg):
    return optax.adam(optax.cosine_decay_schedule(cfg["lr"], cfg["iters"], alpha=cfg["final_lr_fraction"]))


@functools.partial(jax.jit, static_argnames=("dataset", "cfg_items"))
def simulate(keys, *, dataset: str, cfg_items: tuple):
    """(train, test) of each seed key (leading axis S): noisy training and clean test trajectories."""
    return jax.vmap(lambda key: make_data(key, dataset, type("Cfg", (), dict(cfg_items))))(keys)


@functools.partial(jax.jit, static_argnames=("method", "with_v0", "cfg_items"))
def init_states(keys, *, method: str, with_v0: bool, cfg_items: tuple):
    """The initial `TrainState`s of `method` for each seed key (network init from fold_in(key, 7))."""
    cfg = dict(cfg_items)
    init = make_method(method, with_v0, cfg["hidden"], cfg["depth"])[0]
    inits = jax.vmap(lambda key: jax.random.fold_in(key, 7))(keys)
    return common.init_seed_states(init, inits, keys, _optimizer(cfg))


@functools.partial(jax.jit, static_argnames=("method", "with_v0", "hidden", "depth"))
def _l2(params, test, *, method: str, with_v0: bool, hidden: int, depth: int):
    sample = make_method(method, with_v0, hidden, depth)[2]

    def one(params, test):
        err = jnp.linalg.norm(sample(params, test.x0, test.v0) - test.x1, axis=-1)
        return jnp.mean(jnp.where(jnp.isfinite(err), err, jnp.inf)) / UNIT

    return jax.vmap(one)(params, test)


def run_seeds(keys, *, dataset: str, method: str, with_v0: bool, cfg_items: tuple, workdir: str | None = None,
              steps_per_call: int = 1000, data=None):
    """Train one method for every seed key on its data (`data` = `simulate(keys, ...)`, simulated here if None)
    on the shared skeleton (checkpointed under `<workdir>/runs/` and resumed when a workdir is given), and
    sample the test sets.

    Returns (mean L2 per seed in units of c dt (S,), mean loss of the last call)."""
    cfg = dict(cfg_items)
    train, test = simulate(keys, dataset=dataset, cfg_items=cfg_items) if data is None else data
    state = init_states(keys, method=method, with_v0=with_v0, cfg_items=cfg_items)
    loss = make_method(method, with_v0, cfg["hidden"], cfg["depth"])[1]
    setting = "with_v0" if with_v0 else "without_v0"
    run = {**cfg, "dataset": dataset, "method": method, "setting": setting,
           "keys": np.asarray(jax.random.key_data(keys)).tolist()}
    state, row = common.train_seeds(state, lambda params, key, data: loss(params, data), _optimizer(cfg), train,
                                    cfg["iters"], steps_per_call=steps_per_call, workdir=workdir,
                                    name=f"{dataset}_{setting}_{method}", config=run)
    l2 = _l2(state.params, test, method=method, with_v0=with_v0, hidden=cfg["hidden"], depth=cfg["depth"])
    return l2, row.get("loss", float("nan"))


@jax.jit
def reference_rows(test: sims.Trajectories):
    """Untrained references on one seed's test set (units of c dt)."""

    def exact_force_rollout(v0):
        def step(carry, _):
            x, p = carry
            force = sims.field_force(x, rel.velocity_from_momentum(p, C, M))
            return rel.relativistic_step(x, p, force, DT, C, M), None

        return jax.lax.scan(step, (test.x0, rel.momentum_from_velocity(v0, C, M)), None, length=K)[0][0]

    x0 = test.x0
    v0_mean = 0.5 * rel.perpendicular_2d(x0) / (1.0 + jnp.linalg.norm(x0, axis=1, keepdims=True))

    def err(x):
        return jnp.mean(jnp.linalg.norm(x - test.x1, axis=-1)) / UNIT

    return {"exact_v0": err(exact_force_rollout(test.v0)), "mean_v0": err(exact_force_rollout(v0_mean)),
            "none": err(x0)}


def _fmt(values):
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        return f"non-finite in {int(np.sum(~np.isfinite(v)))} seeds"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v[0]:.3f}"


def _append_row(out, row):
    """Rows are also appended to `<out>/form_fair_rows.jsonl` as they finish (a long run keeps what it did)."""
    if out is None:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "form_fair_rows.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def run(cfg, out: str | None = None):
    """Every (dataset, setting, method) over cfg.seeds seeds; returns rows (dicts) and writes the table."""
    if cfg.seeds < 2:
        raise ValueError(f"seeds must be >= 2 to report a spread, got {cfg.seeds}")
    items = tuple(sorted((k, cfg[k]) for k in ("n_train", "n_test", "substeps", "position_noise", "velocity_noise",
                                                "iters", "lr", "final_lr_fraction", "hidden", "depth")))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(jnp.arange(cfg.seeds))
    rows = []
    for dataset in cfg.datasets.split(","):
        data = simulate(keys, dataset=dataset, cfg_items=items)
        refs = jax.vmap(reference_rows)(data[1])
        for setting in cfg.settings.split(","):
            with_v0 = setting == "with_v0"
            if setting not in ("with_v0", "without_v0"):
                raise ValueError(f"unknown setting {setting!r}; known: with_v0, without_v0")
            ref_rows = [("exact forces, 10-step ForM sampler, true v0", "exact_v0")] if with_v0 else [
                ("exact forces, 10-step ForM sampler, v0 = its x0-predictable part", "mean_v0")]
            ref_rows.append(("no motion |x1 - x0|", "none"))
            for label, key in ref_rows:
                rows.append({"dataset": dataset, "setting": setting, "method": label, "params": "-",
                             "l2": _fmt(refs[key]), "per_seed": np.asarray(refs[key]).tolist()})
                _append_row(out, rows[-1])
            for method in cfg.methods.split(","):
                start = time.perf_counter()
                l2, final = run_seeds(keys, dataset=dataset, method=method, with_v0=with_v0, cfg_items=items,
                                      workdir=out, steps_per_call=cfg.checkpoint_every, data=data)
                init = make_method(method, with_v0, cfg.hidden, cfg.depth)[0]
                rows.append({"dataset": dataset, "setting": setting, "method": NAMES[method],
                             "params": n_params(init(jax.random.key(0))), "l2": _fmt(l2),
                             "per_seed": np.asarray(l2).tolist(), "final_loss": float(np.mean(final))})
                _append_row(out, rows[-1])
                print(f"{dataset:>7s} {setting:>10s} {method:>6s}: {_fmt(l2)} c dt "
                      f"(final loss {float(np.mean(final)):.3g}; {time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def markdown(rows, cfg):
    lines = [f"# ForM vs first/second-order FM on a position- and velocity-dependent force field ({cfg.seeds} seeds)",
             "",
             f"Mean paired end-point L2 in units of c dt (mean ± std over seeds). Training: {cfg.n_train} "
             f"trajectories observed with noise (positions {cfg.position_noise} c T, velocities "
             f"{cfg.velocity_noise} c); generator {cfg.substeps} fine steps per recorded step; every network "
             f"{cfg.depth} x {cfg.hidden} tanh, Adam {cfg.lr} cosine to x{cfg.final_lr_fraction}, {cfg.iters} "
             f"full-batch iterations; {cfg.n_test} clean test trajectories."]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        title = {"with_v0": "Setting with v0: every method is given (x0, v0)",
                 "without_v0": "Setting without v0: every method is given x0 only"}[setting]
        lines += ["", f"## {title}", "", "| dataset | method | parameters | L2 / (c dt) | per seed |",
                  "|---|---|---|---|---|"]
        for r in rows:
            if r["setting"] == setting:
                seeds = " ".join(f"{v:.3f}" for v in r["per_seed"])
                lines.append(f"| {r['dataset']} | {r['method']} | {r['params']} | {r['l2']} | {seeds} |")
    return "\n".join(lines) + "\n"


def main(cfg, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    rows = run(cfg, workdir)
    md = markdown(rows, cfg)
    path = os.path.join(workdir, "form_fair.md")
    with open(path, "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    common.run(main, "experiments/configs/form_fair.py", "results/form_fair")
