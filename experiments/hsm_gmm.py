"""Hamiltonian score matching on a 2-D Gaussian mixture with a known score.

    python -m experiments.hsm_gmm --config experiments/configs/hsm_gmm.py[:quick] --workdir results/hsm_gmm

Three parts (papers.md §3.3):
1. Learn grad log pi by HSM (force network vs velocity-predictor network, the trainer's single-optimiser step with
   the stop-gradient split of `fm_jax.hsm.hsm_loss`) and by denoising score matching at a small noise level; report
   the explicit score error E_pi ||F - grad log pi||^2 of both.
2. The Hamiltonian score discrepancy against its small-time form: HSD_T (estimated by Liouville importance
   sampling, `fm_jax.hamiltonian.hamiltonian_score_discrepancy`) vs (T^3/3) E||F - grad log pi||^2 for several T
   and forces (the learned networks and an analytic wrong force 0.5 grad log pi).
3. Gradient signal-to-noise ratio of HSM vs DSM across noise levels sigma, at one fixed force network (the
   untrained network by default, where the mean gradient is largest; `warmup_steps` trains it first by DSM).
   For HSM the noise level is the horizon T = sigma (positions spread by about T sigma_v = sigma, as the DSM
   perturbation). From N per-example gradients g_i, SNR = (||mean g||^2 - tr Cov g / N) / tr Cov g, the
   single-example SNR (a batch of B multiplies it by B; values below ~1/N are at the noise floor). HSM is
   measured with a learned velocity predictor (trained by regression at that T with the force fixed) and with
   the small-time oracle V(x, tau) = tau (F(x) - grad log pi(x)); explicit score matching (the noise-free
   gradient of E||F - grad log pi||^2) is the reference.

Every training run (HSM alternating and simultaneous, DSM, the warm-up, each SNR predictor) goes through
`common.fit_steps` (`fm_jax.training.fit`), checkpointed under `<workdir>/runs/<name>`: a relaunch resumes, and
finished runs are restored instead of retrained.
Writes `hsm_gmm.md` (tables), `hsm_gmm.json`, and `snr.png` under `--workdir`.
"""

from __future__ import annotations

import functools
import json
import os
import time
import types

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from experiments import common, plots
from fm_jax import hamiltonian as H
from fm_jax import hsm
from fm_jax.models import MLP, as_apply
from fm_jax.training import init_train_state, make_optimizer, make_scan_train_step

# The mixture: four isotropic components, unequal weights.
MEANS = jnp.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5], [0.3, 1.6]])
STD = 0.45
WEIGHTS = jnp.array([0.3, 0.3, 0.2, 0.2])


def log_density(x):
    """log pi(x) up to a constant, one point (2,)."""
    logp = -0.5 * jnp.sum((x - MEANS) ** 2, -1) / STD**2
    return jax.scipy.special.logsumexp(logp, b=WEIGHTS)


score = jax.grad(log_density)


def sample_data(key, n):
    kc, kn = jax.random.split(key)
    comp = jax.random.choice(kc, MEANS.shape[0], (n,), p=WEIGHTS)
    return MEANS[comp] + STD * jax.random.normal(kn, (n, 2))


def make_net(seed, hidden, depth):
    return as_apply(MLP(2, 2, hidden=hidden, depth=depth, time_features=16, rngs=nnx.Rngs(seed)))


def score_error(apply_f, params, x):
    """E_pi ||F(x) - grad log pi(x)||^2 and its ratio to E_pi ||grad log pi||^2."""
    f = apply_f(params, x)
    s = jax.vmap(score)(x)
    err = jnp.mean(jnp.sum((f - s) ** 2, -1))
    return float(err), float(err / jnp.mean(jnp.sum(s**2, -1)))


# Sub-runs checkpoint under `<workdir>/runs/<name>` with the fields their training reads (compared on resume).
TRAIN_FIELDS = ("steps", "batch", "lr", "hidden", "depth", "inner_steps", "velocity_lr", "hsm_T", "hsm_steps",
                "dsm_sigma")
STEPS_PER_CALL = 100  # one host-drawn batch stack (and one compiled scan) per 100 steps


def _run(args, name, fields, **extra):
    """`fit_steps` keyword arguments of sub-run `name`: its directory, its config (`fields` of args + `extra`)."""
    config = {**{f: getattr(args, f) for f in fields}, **extra}
    return {"workdir": args.out, "name": name, "config": config, "checkpoint_every": args.checkpoint_every}


def train(loss_fn, params, problem, steps, batch, lr, seed, opt=None, **run):
    """The project's scanned train step on the shared skeleton (`common.fit_steps`: 100 steps a call, data drawn
    on the host from the call's first step; checkpointed and resumed with `run` = `_run(...)`); returns the final
    parameters (raw, not EMA), seconds and the last call's mean metrics."""
    if opt is None:
        opt = make_optimizer(lr, warmup_steps=min(100, steps // 10), total_steps=steps, final_lr_fraction=0.1)
    scan = make_scan_train_step(loss_fn, opt, ema_decay=0.99)

    def make_advance(k):
        def advance(state):
            x = sample_data(jax.random.fold_in(jax.random.key(seed + 1), int(state.step)), k * batch)
            return scan(state, x.reshape(k, batch, 2), problem)

        return advance

    start = time.perf_counter()
    state, row = common.fit_steps(init_train_state(jax.random.key(seed), params, opt), make_advance, steps,
                                  steps_per_call=STEPS_PER_CALL, **run)
    return state.params, time.perf_counter() - start, row


def train_alternating(force_apply, apply_v, theta, phi, problem, args, seed):
    """HSM by alternating updates: `inner` predictor steps per force step (force rate with a cosine decay)."""
    f_opt = make_optimizer(args.lr, total_steps=args.steps, final_lr_fraction=0.05, clip_norm=None)
    v_opt = optax.adam(args.velocity_lr)
    step = hsm.make_hsm_alternating_step(force_apply, apply_v, f_opt, v_opt, inner_steps=args.inner_steps)

    def make_advance(k):
        def advance(state):
            metrics = []
            for i in range(int(state.step), int(state.step) + k):
                x0 = sample_data(jax.random.fold_in(jax.random.key(seed + 1), i), args.batch)
                state, m = step(state, jax.random.fold_in(jax.random.key(seed), i), x0, problem)
                metrics.append(m)
            metrics = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *metrics)
            return state, {"loss": metrics["hsm"], **metrics}

        return advance

    start = time.perf_counter()
    state, row = common.fit_steps(hsm.init_hsm_state(theta, phi, f_opt, v_opt), make_advance, args.steps,
                                  steps_per_call=STEPS_PER_CALL, **_run(args, "hsm_alternating", TRAIN_FIELDS))
    return state.force_params, time.perf_counter() - start, row


def part1(args):
    apply_f, theta0 = make_net(0, args.hidden, args.depth)
    apply_v, phi0 = make_net(1, args.hidden, args.depth)
    force_apply = lambda p, x: apply_f(p, x, 0.0)  # noqa: E731  (a position-only force)
    problem = hsm.HamiltonianScoreMatching(tau_max=args.hsm_T, n_steps=args.hsm_steps)
    theta_alt, sec_alt, m_alt = train_alternating(force_apply, apply_v, theta0, phi0, problem, args, seed=5)
    hsm_fn = functools.partial(hsm.hsm_loss, force_apply=force_apply, velocity_apply=apply_v)
    # Simultaneous descent-ascent through the trainer: each player its own optimiser (no joint gradient clipping,
    # which would let the noisy predictor gradient shrink the force step), the force at half the rate.
    force_opt = make_optimizer(0.5 * args.lr, total_steps=args.steps, final_lr_fraction=0.05, clip_norm=None)
    opt = hsm.hsm_optimizer(force_opt, optax.adam(args.velocity_lr))
    theta_gda, sec_gda, m_gda = train(hsm_fn, {"force": theta0, "velocity": phi0}, problem, args.steps, args.batch,
                                      args.lr, seed=10, opt=opt, **_run(args, "hsm_simultaneous", TRAIN_FIELDS))
    dsm_fn = functools.partial(hsm.denoising_score_matching_loss, score_apply=force_apply)
    theta_dsm, sec_dsm, m_dsm = train(dsm_fn, theta0, jnp.asarray(args.dsm_sigma), args.steps, args.batch, args.lr, 20,
                                      **_run(args, "dsm", TRAIN_FIELDS))
    x_eval = sample_data(jax.random.key(99), 20_000)
    rows = []
    for name, params, sec in [
        (f"HSM alternating ({args.inner_steps} predictor steps / force step)", theta_alt, sec_alt),
        ("HSM simultaneous (trainer, hsm_loss, hsm_optimizer)", theta_gda["force"], sec_gda),
        (f"DSM (sigma={args.dsm_sigma})", theta_dsm, sec_dsm),
        ("untrained network", theta0, 0.0),
    ]:
        err, rel = score_error(force_apply, params, x_eval)
        rows.append({"method": name, "score_mse": err, "relative": rel, "train_seconds": sec})
    return rows, force_apply, theta_alt, theta_dsm, {"hsm_alternating": m_alt, "hsm_simultaneous": m_gda, "dsm": m_dsm}


def part2(args, force_apply, theta_hsm, theta_dsm):
    x0 = sample_data(jax.random.key(7), args.hsd_points)
    forces = {
        "0.5 grad log pi": H.ScoreForce(log_density, scale=0.5),
        "HSM network": lambda x, tau: force_apply(theta_hsm, x[None])[0],
        "DSM network": lambda x, tau: force_apply(theta_dsm, x[None])[0],
    }
    rows = []
    for name, force in forces.items():
        hsd_fn = jax.jit(
            lambda key, T, force=force: H.hamiltonian_score_discrepancy(
                key, force, log_density, x0, T, n_tau=4, n_velocities=args.hsd_velocities, n_steps=4
            )
        )
        for T in args.hsd_T:
            hsd = float(hsd_fn(jax.random.key(11), jnp.asarray(T)))
            taylor = float(H.hsd_small_time(force, score, x0, T))
            rows.append({"force": name, "T": T, "hsd": hsd, "taylor": taylor, "ratio": hsd / taylor})
    return rows


def snr_and_cosine(grads, reference=None):
    """Single-example SNR of per-example gradients (a pytree with leading axis N), and the cosine between their
    mean and a `reference` mean gradient (the explicit score-matching direction): SNR says how noisy an estimator
    is, the cosine whether it points the right way (a biased estimator can be precise and wrong)."""
    flat = jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)], axis=1)
    n = flat.shape[0]
    mean = jnp.mean(flat, 0)
    trace = jnp.sum(jnp.var(flat, 0, ddof=1))
    snr = float((jnp.sum(mean**2) - trace / n) / trace)
    if reference is None:
        return snr, mean
    return snr, float(jnp.dot(mean, reference) / (jnp.linalg.norm(mean) * jnp.linalg.norm(reference)))


def per_example_gradients(force_apply, n):
    """The SNR measurement: n points x0 ~ pi and n keys, and jitted per-example gradients (leading axis n) with
    respect to the force parameters theta: `esm(theta)` of ||F - grad log pi||^2 (explicit score matching),
    `dsm(theta, sigma)` of DSM, `hsm(theta, velocity_apply, phi, problem, oracle)` of the HSM objective with the
    predictor `velocity_apply(phi, .)` or, with `oracle`, the small-time oracle. Returns (x0, esm, dsm, hsm)."""
    x0 = sample_data(jax.random.key(21), n)
    keys = jax.random.split(jax.random.key(22), n)

    def esm_one(p, x):
        return jnp.sum((force_apply(p, x[None])[0] - score(x)) ** 2)

    def dsm_one(p, key, x, sigma):
        return hsm.denoising_score_matching_loss(p, key, x[None], sigma, score_apply=force_apply)[0]

    def hsm_one(p, velocity_apply, phi, key, x, problem, oracle):
        tau, xt, vt = hsm.simulate(p, key, x[None], problem, force_apply=force_apply)
        if oracle:
            # tau (F - grad log pi) with the force held fixed: the small-time HVP of the current force.
            pred = tau[:, None] * (force_apply(jax.lax.stop_gradient(p), xt) - jax.vmap(score)(xt))
        else:
            pred = velocity_apply(phi, xt, tau / problem.tau_max)
        return jnp.sum(vt**2) - jnp.sum((vt - pred) ** 2)

    esm = jax.jit(lambda p: jax.vmap(jax.grad(esm_one), in_axes=(None, 0))(p, x0))
    dsm = jax.jit(lambda p, sigma: jax.vmap(jax.grad(dsm_one), in_axes=(None, 0, 0, None))(p, keys, x0, sigma))
    hsm_grads = jax.jit(jax.vmap(jax.grad(hsm_one), in_axes=(None, None, None, 0, 0, None, None)), static_argnums=6)

    def hsm_fn(theta, velocity_apply, phi, problem, oracle: bool):
        return hsm_grads(theta, velocity_apply, phi, keys, x0, problem, oracle)

    return x0, esm, dsm, hsm_fn


def part3(args, force_apply, theta_dsm_warm):
    apply_v, phi0 = make_net(3, args.hidden, args.depth)
    theta = theta_dsm_warm
    _, esm, dsm, hsm_grads = per_example_gradients(force_apply, args.snr_samples)
    esm_snr, esm_mean = snr_and_cosine(esm(theta))
    fit_v = functools.partial(hsm.hsm_loss, force_apply=force_apply, velocity_apply=apply_v)

    rows = []
    for sigma in args.snr_sigmas:
        problem = hsm.HamiltonianScoreMatching(tau_max=sigma, n_steps=args.hsm_steps)
        # Fit the predictor at this horizon with the force frozen (only the predictor's optimiser moves).
        opt = hsm.hsm_optimizer(optax.set_to_zero(), optax.adam(args.lr))
        run = _run(args, f"snr_predictor_sigma{sigma:g}", ("batch", "lr", "hidden", "depth", "hsm_steps",
                                                           "warmup_steps", "snr_predictor_steps"), sigma=sigma)
        params, _, _ = train(fit_v, {"force": theta, "velocity": phi0}, problem, args.snr_predictor_steps, args.batch,
                             args.lr, 30, opt, **run)
        phi = params["velocity"]
        row = {"sigma": sigma, "esm": esm_snr}
        row["dsm"], row["dsm_cos"] = snr_and_cosine(dsm(theta, jnp.asarray(sigma)), esm_mean)
        for name, oracle in (("hsm_learned_v", False), ("hsm_oracle_v", True)):
            row[name], row[name + "_cos"] = snr_and_cosine(hsm_grads(theta, apply_v, phi, problem, oracle), esm_mean)
        rows.append(row)
        print(f"  sigma={sigma:g}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "sigma"), flush=True)
    return rows


def plot(rows, path, n_samples=None):
    labels = {"dsm": "DSM", "hsm_learned_v": "HSM, learned V", "hsm_oracle_v": "HSM, oracle V"}
    series = {label: [max(r[key], 1e-6) for r in rows] for key, label in labels.items()}
    hlines = {"explicit SM (no noise)": (max(rows[0]["esm"], 1e-6), "--")}
    if n_samples:
        hlines["noise floor 1/N"] = (1.0 / n_samples, ":")
    plots.curves([r["sigma"] for r in rows], series, path, xlabel="noise level sigma (HSM: horizon T)",
                 ylabel="single-example gradient SNR", title="Gradient SNR on a 2-D Gaussian mixture", logy=True,
                 hlines=hlines, xticks=True)


def markdown(res):
    lines = ["# Hamiltonian score matching on a 2-D Gaussian mixture", ""]
    lines += ["## Explicit score error E_pi||F - grad log pi||^2", "", "| method | score MSE | relative | train s |"]
    lines += ["|---|---|---|---|"]
    for r in res["score_error"]:
        lines.append(f"| {r['method']} | {r['score_mse']:.4f} | {r['relative']:.4f} | {r['train_seconds']:.1f} |")
    lines += ["", "## HSD_T vs (T^3/3) E||F - grad log pi||^2", "", "| force | T | HSD_T | Taylor | ratio |"]
    lines += ["|---|---|---|---|---|"]
    for r in res["hsd"]:
        lines.append(f"| {r['force']} | {r['T']:g} | {r['hsd']:.4e} | {r['taylor']:.4e} | {r['ratio']:.3f} |")
    lines += ["", "## Single-example gradient SNR", ""]
    lines += ["SNR (cosine of the mean gradient with the explicit score-matching gradient in brackets).", ""]
    lines += ["| sigma | DSM | HSM (learned V) | HSM (oracle V) | explicit SM |", "|---|---|---|---|---|"]
    for r in res["snr"]:
        cells = [f"{r[k]:.3g} ({r[k + '_cos']:.2f})" for k in ("dsm", "hsm_learned_v", "hsm_oracle_v")]
        lines.append(f"| {r['sigma']:g} | " + " | ".join(cells) + f" | {r['esm']:.3g} |")
    return "\n".join(lines) + "\n"


def main(config, workdir: str):
    args = types.SimpleNamespace(**config.to_dict(), out=workdir)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    print("part 1: learning the score by HSM and DSM", flush=True)
    rows1, force_apply, theta_hsm, theta_dsm, last = part1(args)
    for r in rows1:
        print(f"  {r['method']}: score MSE {r['score_mse']:.4f} (relative {r['relative']:.4f})", flush=True)
    print("part 2: HSD vs its small-time form", flush=True)
    rows2 = part2(args, force_apply, theta_hsm, theta_dsm)
    for r in rows2:
        print(f"  {r['force']}, T={r['T']:g}: HSD {r['hsd']:.4e}, Taylor {r['taylor']:.4e}, ratio {r['ratio']:.3f}")
    print("part 3: gradient SNR", flush=True)
    _, theta_init = make_net(0, args.hidden, args.depth)
    dsm_fn = functools.partial(hsm.denoising_score_matching_loss, score_apply=force_apply)
    theta_warm = theta_init
    if args.warmup_steps:
        theta_warm, _, _ = train(dsm_fn, theta_init, jnp.asarray(0.3), args.warmup_steps, args.batch, args.lr, 40,
                                 **_run(args, "dsm_warmup", ("warmup_steps", "batch", "lr", "hidden", "depth")))
    rows3 = part3(args, force_apply, theta_warm)
    res = {"score_error": rows1, "hsd": rows2, "snr": rows3, "final_metrics": last, "config": vars(args)}
    res["seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "hsm_gmm.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    with open(os.path.join(args.out, "hsm_gmm.md"), "w") as f:
        f.write(markdown(res))
    plot(rows3, os.path.join(args.out, "snr.png"), args.snr_samples)
    print(markdown(res))
    print(f"total {res['seconds']:.0f} s; wrote {args.out}/hsm_gmm.md, hsm_gmm.json, snr.png")
    return res


if __name__ == "__main__":
    common.run(main, "experiments/configs/hsm_gmm.py", "results/hsm_gmm")
