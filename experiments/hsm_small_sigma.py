"""Why HSM with a learned velocity predictor points the wrong way at small sigma, measured.

    python -m experiments.hsm_small_sigma --config experiments/configs/hsm_small_sigma.py

Setting of `experiments/hsm_gmm.py` part 3: the same 2-D Gaussian mixture, the same untrained force network
F_theta (2 x 64), HSM horizon T = sigma, sigma_v = 1, 4 velocity-Verlet steps. For each sigma the velocity predictor
V_phi is fitted by regression on (x_tau, v_tau) with the force frozen, under several predictor variants (the
parameterisation, the number of steps and schedule, the width, the batch). For each variant we report

* the predictor's relative error  E||V_phi - V*||^2 / E||V*||^2  against the small-time oracle
  V*(x, tau) = tau (F(x) - grad log pi(x))  (exact to O(tau^2); at sigma = 1 only indicative),
* the single-example SNR of the per-example HSM gradients and the cosine of their mean with the explicit
  score-matching gradient (the direction HSM should follow),

next to DSM and HSM with the oracle predictor. Each predictor fit runs on `common.fit_steps`, checkpointed under
`<workdir>/runs/sigma<sigma>_<variant>` (a relaunch resumes; finished fits are restored).
Why the predictor matters (derived in docs/paper_fidelity.md):
at small tau the theta-gradient of J = E[2 v.V - ||V||^2] is 2 tau^2 E[dF/dtheta (F - grad log pi)] with the
oracle, and an error e(x) in V adds the bias 2 tau E[dF/dtheta e]: the cosine collapses once |e| ~ tau |F - score|,
i.e. once the predictor's relative error reaches ~1.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import optax

from experiments import common

# The mixture, data and networks of experiments/hsm_gmm.py: the same setting, measured further.
from experiments.hsm_gmm import make_net, per_example_gradients, sample_data, score, snr_and_cosine
from fm_jax import hsm
from fm_jax.training import init_train_state, make_train_loop


def parse_variant(text):
    name, param, steps, schedule, hidden, batch = text.split(":")
    if param not in ("plain", "scaled") or schedule not in ("constant", "cosine"):
        raise ValueError(f"bad variant {text!r}: parameterisation plain|scaled, schedule constant|cosine")
    return {"name": name, "param": param, "steps": int(steps), "schedule": schedule, "hidden": int(hidden),
            "batch": int(batch)}


def fit_predictor(force_apply, theta, problem, variant, cfg, key, workdir=None):
    """Regress V_phi(x_tau, tau / T) on v_tau with the force frozen, on the shared skeleton (`common.fit_steps`,
    50 steps a call; with a workdir, checkpointed under `runs/sigma<sigma>_<variant>` and resumed); returns
    velocity_apply, phi and the mean loss of the last 50 steps."""
    raw_apply, phi = make_net(3, variant["hidden"], cfg.depth)
    if variant["param"] == "scaled":
        velocity_apply = hsm.TimeScaledPredictor(raw_apply, problem.tau_max)
    else:
        velocity_apply = raw_apply
    lr = cfg.lr if variant["schedule"] == "constant" else optax.cosine_decay_schedule(cfg.lr, variant["steps"], 0.05)
    opt = optax.adam(lr)

    def regression(phi, k, batch, path):
        del batch, path
        k_x, k_sim = jax.random.split(k)
        x0 = sample_data(k_x, variant["batch"])
        tau, x, v = hsm.simulate(theta, k_sim, x0, problem, force_apply=force_apply)
        loss = jnp.mean(jnp.sum((v - velocity_apply(phi, x, tau / problem.tau_max)) ** 2, -1))
        return loss, {"loss": loss}

    def make_advance(k):
        return functools.partial(make_train_loop(regression, opt, lambda _: None, steps_per_call=k), path=None)

    sigma = float(problem.tau_max)
    run = {**variant, "sigma": sigma, "lr": cfg.lr, "depth": cfg.depth, "hsm_steps": cfg.hsm_steps, "seed": cfg.seed}
    state, row = common.fit_steps(init_train_state(key, phi, opt), make_advance, variant["steps"], steps_per_call=50,
                                  workdir=workdir, name=f"sigma{sigma:g}_{variant['name']}", config=run,
                                  checkpoint_every=cfg.checkpoint_every)
    return velocity_apply, state.params, row["loss"]


def run(cfg, workdir=None):
    force_net, theta = make_net(0, cfg.hidden, cfg.depth)
    force_apply = lambda p, x: force_net(p, x, 0.0)  # noqa: E731  (a position-only force)
    x0, esm, dsm_grads, hsm_grads = per_example_gradients(force_apply, cfg.snr_samples)
    _, esm_mean = snr_and_cosine(esm(theta), None)

    def predictor_error(velocity_apply, phi, problem):
        tau, xt, _ = hsm.simulate(theta, jax.random.key(23), x0, problem, force_apply=force_apply)
        oracle = tau[:, None] * (force_apply(theta, xt) - jax.vmap(score)(xt))
        pred = velocity_apply(phi, xt, tau / problem.tau_max)
        return float(jnp.sum((pred - oracle) ** 2) / jnp.sum(oracle**2))

    variants = [parse_variant(v) for v in cfg.variants.split(",")]
    rows = []
    for sigma in [float(s) for s in cfg.sigmas.split(",")]:
        problem = hsm.HamiltonianScoreMatching(tau_max=sigma, n_steps=cfg.hsm_steps)
        row = {"sigma": sigma}
        row["dsm"] = snr_and_cosine(dsm_grads(theta, jnp.asarray(sigma)), esm_mean)
        row["oracle"] = snr_and_cosine(hsm_grads(theta, None, None, problem, True), esm_mean)
        for variant in variants:
            start = time.perf_counter()
            velocity_apply, phi, final = fit_predictor(force_apply, theta, problem, variant, cfg,
                                                       jax.random.key(30 + cfg.seed), workdir)
            err = predictor_error(velocity_apply, phi, problem)
            snr, cos = snr_and_cosine(hsm_grads(theta, velocity_apply, phi, problem, False), esm_mean)
            row[variant["name"]] = (snr, cos, err)
            print(f"sigma={sigma:g} {variant['name']}: SNR {snr:.3g}, cos {cos:.2f}, predictor rel. error {err:.3g} "
                  f"(final mse {final:.4f}; {time.perf_counter() - start:.1f} s)", flush=True)
        print(f"sigma={sigma:g} DSM: SNR {row['dsm'][0]:.3g} cos {row['dsm'][1]:.2f}; oracle: SNR "
              f"{row['oracle'][0]:.3g} cos {row['oracle'][1]:.2f}", flush=True)
        rows.append(row)
    return rows, variants


def markdown(rows, variants, cfg):
    lines = ["# HSM at small sigma: gradient SNR (cosine with the explicit score-matching gradient)", "",
             f"2-D Gaussian mixture of experiments/hsm_gmm.py, untrained force network {cfg.depth} x {cfg.hidden}, "
             f"T = sigma, sigma_v = 1, {cfg.hsm_steps} Verlet steps, {cfg.snr_samples} per-example gradients "
             f"(SNR values below ~{1 / cfg.snr_samples:.1g} are at the noise floor).", "",
             "Predictor variants (parameterisation: plain V = net(x, s) or scaled V = tau net(x, s); regression "
             "steps; learning-rate schedule; width; batch):", ""]
    for v in variants:
        lines.append(f"- `{v['name']}`: {v['param']}, {v['steps']} steps, {v['schedule']} lr {cfg.lr}, width "
                     f"{v['hidden']}, batch {v['batch']} ({v['steps'] * v['batch']:,} regression samples)")
    head = ["sigma", "DSM", "HSM oracle V"] + [f"HSM `{v['name']}`" for v in variants]
    lines += ["", "## SNR (cosine)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['sigma']:g}"] + [f"{r[k][0]:.3g} ({r[k][1]:.2f})" for k in ["dsm", "oracle"]]
        cells += [f"{r[v['name']][0]:.3g} ({r[v['name']][1]:.2f})" for v in variants]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["sigma"] + [f"`{v['name']}`" for v in variants]
    lines += ["", "## Predictor relative error E||V - V*||^2 / E||V*||^2 (V* = tau (F - grad log pi))", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([f"{r['sigma']:g}"] + [f"{r[v['name']][2]:.3g}" for v in variants]) + " |")
    return "\n".join(lines) + "\n"


def main(cfg, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    rows, variants = run(cfg, workdir)
    md = markdown(rows, variants, cfg)
    with open(os.path.join(workdir, "hsm_small_sigma.md"), "w") as f:
        f.write(md)
    with open(os.path.join(workdir, "hsm_small_sigma.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(md)
    print(f"wrote {workdir}/hsm_small_sigma.md in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    common.run(main, "experiments/configs/hsm_small_sigma.py", "results/hsm_small_sigma")
