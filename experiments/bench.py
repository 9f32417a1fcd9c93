"""`make bench`: throughput of the compiled train step and sampler, against this machine's limits and PyTorch.

    python -m experiments.bench --config experiments/configs/bench.py[:quick] --workdir results   # results/bench.json

Measures, in one process and one run:
- the f32 matrix-product rate (2048² jitted matmul): the practical FLOP/s limit of this machine;
- the 2-D MLP train step (width 256, 3 hidden layers, batch 256, Adam, Cond-OT loss): steps/s one dispatch per
  step, and with `lax.scan` over 100 steps per call; compile time; FLOPs per step from XLA's cost analysis;
  achieved FLOP/s as a fraction of the matmul rate;
- sampling 10,000 points with 100 Euler steps;
- the toy step's dense work alone (`dense_bound`: its matrix products at the same shapes, 100 per call): the
  steps/s no fusion of the rest can beat, and the matmul rate at the toy's shapes;
- the same model, batch, optimiser and sampler in a plain PyTorch loop when PyTorch is importable (ratios);
- extra sections registered in `EXTRA_BENCHMARKS` (e.g. Kac velocity throughput).
- the U-Net image benchmark (`experiments.bench_images`: MNIST U-Net train step and sampling vs its PyTorch
  twin, MFU, the 8-convolution stack) under the key "images".
The JAX toy step, its PyTorch twin (`TORCH_THREADS` threads) and the matmul are timed in turn within each round
(the machine may be shared); figures are medians over rounds, with the 1-minute load average recorded beside them.
Compare ratios from one run.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import os
import platform
import statistics
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fm_jax as fj
from experiments import common
from fm_jax import paths as P

WIDTH, DEPTH, BATCH, TIME_FEATURES = 256, 3, 256, 64
SAMPLE_POINTS, SAMPLE_STEPS = 10_000, 100
# Modules with a `run(quick: bool) -> dict` function, added to the JSON under their key when importable.
EXTRA_BENCHMARKS = {"kac": "experiments.bench_kac", "images": "experiments.bench_images"}
TORCH_THREADS = 2  # PyTorch intra-op threads (this machine has 2 cores; XLA:CPU uses them all)
ROUNDS = 5


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(n: int = 2048, repeats: int = 10) -> dict:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    sec = _median_time(lambda: mm(a, b).block_until_ready(), repeats)
    return {"n": n, "seconds": sec, "gflops": 2 * n**3 / sec / 1e9}


def _matmul_runner(n: int):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, a).block_until_ready()

    def rate() -> float:
        start = time.perf_counter()
        for _ in range(3):
            out = mm(a, a)
        out.block_until_ready()
        return 3 * 2 * n**3 / (time.perf_counter() - start) / 1e9

    return rate


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def jax_train(quick: bool) -> tuple[dict, dict]:
    """(compile time and FLOPs, {name: runner returning steps/s}) of the toy train step, one dispatch per step and
    100 steps per `lax.scan` call."""
    path = P.AffinePath(P.CondOT())
    model = fj.models.MLP(2, 2, hidden=WIDTH, depth=DEPTH, time_features=TIME_FEATURES, rngs=nnx.Rngs(0))
    apply, params = fj.models.as_apply(model)
    opt = fj.make_optimizer(1e-3, clip_norm=None)
    loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)
    batch = fj.data.toy.half_moons(jax.random.key(0), BATCH)

    def step(state, batch, path):
        return fj.training.train_step(state, batch, path, loss_fn=loss_fn, optimizer=opt, ema_decay=0.999)

    jitted = jax.jit(step, donate_argnums=0)
    state = fj.init_train_state(jax.random.key(1), params, opt)
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, path).compile()
    compile_seconds = time.perf_counter() - start
    flops = _flops(compiled)

    n = 200 if quick else 500
    state, m = compiled(state, batch, path)
    m["loss"].block_until_ready()

    k = 100
    batches = fj.data.toy.half_moons(jax.random.key(2), k * BATCH).reshape(k, BATCH, 2)
    scan = fj.training.make_scan_train_step(loss_fn, opt)
    state, m = scan(state, batches, path)
    m["loss"].block_until_ready()

    def rate(advance, calls: int, steps_per_call: int):
        """A timer of `calls` calls of `advance(state)`: steps per second."""

        def run():
            nonlocal state
            start = time.perf_counter()
            for _ in range(calls):
                state, m = advance(state)
            m["loss"].block_until_ready()
            return calls * steps_per_call / (time.perf_counter() - start)

        return run

    single = rate(lambda s: compiled(s, batch, path), n, 1)
    scanned = rate(lambda s: scan(s, batches, path), 2 if quick else 5, k)
    return {"compile_seconds": compile_seconds, "flops_per_step": flops}, {"jax": single, "jax_scan": scanned}


def dense_bound(quick: bool) -> tuple[dict, Callable[[], float]]:
    """The toy step's matrix products alone, as the limit of what any fusion of the rest could reach.

    The MLP's forward dots, its weight and input gradients (same shapes: batch 256, widths 66 → 256 → 256 → 256 →
    2), with no activation, time embedding, loss, data draw, Adam or EMA (only an SGD update, to carry a
    dependency from step to step), 100 per `lax.scan` call. Its steps/s is what the train step would run at if
    everything but its dense work were free; its FLOP rate is the matmul rate at the toy's small shapes.
    Returns ({flops_per_step, compile_seconds}, runner returning steps/s)."""
    sizes = [2 + TIME_FEATURES] + [WIDTH] * DEPTH + [2]
    keys = jax.random.split(jax.random.key(3), len(sizes) + 1)
    ws = [jax.random.normal(k, (a, b), jnp.float32) / math.sqrt(a) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    x = jax.random.normal(keys[-2], (BATCH, sizes[0]), jnp.float32)
    r = jax.random.normal(keys[-1], (BATCH, sizes[-1]), jnp.float32)
    k = 100

    def loss(ws):
        h = x
        for w in ws:
            h = h @ w
        return jnp.vdot(h, r)

    def body(ws, _):
        return [w - 1e-9 * g for w, g in zip(ws, jax.grad(loss)(ws))], None

    scan = jax.jit(lambda ws: jax.lax.scan(body, ws, None, length=k)[0], donate_argnums=0)
    start = time.perf_counter()
    compiled = scan.lower(ws).compile()
    info = {"compile_seconds": time.perf_counter() - start, "steps_per_call": k}
    flops = _flops(compiled)
    # The FLOPs of one step, written out (XLA's cost analysis may count a scan's body once): forward, weight
    # gradients and input gradients, 2·B·a·b each, less the first layer's input gradient (not needed).
    dense = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    info["flops_per_step"] = 3 * 2 * BATCH * dense - 2 * BATCH * sizes[0] * sizes[1]
    info["xla_cost_analysis_flops"] = flops
    state = compiled(ws)
    jax.block_until_ready(state)
    calls = 2 if quick else 5

    def run() -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(calls):
            state = compiled(state)
        jax.block_until_ready(state)
        return calls * k / (time.perf_counter() - start)

    return info, run


def jax_sampling(quick: bool) -> dict:
    path = P.AffinePath(P.CondOT())
    model = fj.models.MLP(2, 2, hidden=WIDTH, depth=DEPTH, time_features=TIME_FEATURES, rngs=nnx.Rngs(0))
    apply, params = fj.models.as_apply(model)
    run = lambda: fj.sample(jax.random.key(0), path, apply, params, SAMPLE_POINTS, (2,),  # noqa: E731
                            num_steps=SAMPLE_STEPS).samples.block_until_ready()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    sec = _median_time(run, 3 if quick else 7)
    return {"points": SAMPLE_POINTS, "euler_steps": SAMPLE_STEPS, "seconds": sec, "first_call_seconds": first,
            "points_steps_per_second": SAMPLE_POINTS * SAMPLE_STEPS / sec}


def torch_reference(quick: bool) -> dict | None:
    """The same MLP, batch, Adam and Cond-OT loss as a plain PyTorch loop (CPU, `TORCH_THREADS` threads); its
    "runner" returns steps/s."""
    try:
        import torch
    except ImportError:
        return None

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            sizes = [2 + TIME_FEATURES] + [WIDTH] * DEPTH
            self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.out = torch.nn.Linear(WIDTH, 2)
            half = TIME_FEATURES // 2
            self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.5), math.log(64.0), half)))

        def forward(self, x, t):
            ang = 2 * math.pi * t[:, None] * self.freqs[None]
            h = torch.cat([x, torch.sin(ang), torch.cos(ang)], -1)
            for layer in self.hidden:
                h = torch.nn.functional.silu(layer(h))
            return self.out(h)

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x1 = torch.as_tensor(np.array(fj.data.toy.half_moons(jax.random.key(0), BATCH)))

    def one_step():
        t = torch.rand(BATCH)
        x0 = torch.randn(BATCH, 2)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        loss = ((net(xt, t) - (x1 - x0)) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(20):
        one_step()
    n = 200 if quick else 500

    def run_train():
        start = time.perf_counter()
        for _ in range(n):
            loss = one_step()
        loss.item()
        return n / (time.perf_counter() - start)

    def run_sample():
        with torch.no_grad():
            x = torch.randn(SAMPLE_POINTS, 2)
            dt = 1.0 / SAMPLE_STEPS
            for i in range(SAMPLE_STEPS):
                x = x + dt * net(x, torch.full((SAMPLE_POINTS,), i * dt))
        return x

    run_sample()
    sample_sec = _median_time(run_sample, 3 if quick else 7)
    return {"version": torch.__version__, "threads": torch.get_num_threads(), "sampling_seconds": sample_sec,
            "runner": run_train}


def main(config, workdir: str):
    from fm_jax import distributed as fd

    # Before any JAX op. The toy sections run on the first device, as before; the U-Net section adds its
    # data-parallel step over all of them.
    fd.use_host_cores(config.get("host_devices", 0) or None)
    args = types.SimpleNamespace(quick=config.quick, out=os.path.join(workdir, "bench.json"))

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
    }
    report["load_start"] = [round(x, 2) for x in os.getloadavg()]
    report["matmul_f32"] = matmul_rate(1024 if args.quick else 2048)
    report["sampling"] = jax_sampling(args.quick)
    tr, runners = jax_train(args.quick)
    bound_info, runners["dense_bound"] = dense_bound(args.quick)
    torch_ref = torch_reference(args.quick)
    if torch_ref:
        runners["torch"] = torch_ref.pop("runner")
    mm = _matmul_runner(1024 if args.quick else 2048)
    rates, loads = {k: [] for k in [*runners, "matmul"]}, []
    for _ in range(2 if args.quick else ROUNDS):  # interleaved: every round times each in turn
        for k, fn in runners.items():
            rates[k].append(fn())
        rates["matmul"].append(mm())
        loads.append(round(os.getloadavg()[0], 2))
    tr["steps_per_second"] = statistics.median(rates["jax"])
    tr["examples_per_second"] = tr["steps_per_second"] * BATCH
    tr["scan100_steps_per_second"] = statistics.median(rates["jax_scan"])
    tr["scan100_examples_per_second"] = tr["scan100_steps_per_second"] * BATCH
    tr["load_1min_during"] = loads
    report["matmul_f32"]["gflops_same_rounds"] = statistics.median(rates["matmul"])
    if torch_ref:
        torch_ref["steps_per_second"] = statistics.median(rates["torch"])
    report["train_step"], report["pytorch"] = tr, torch_ref
    peak = report["matmul_f32"]["gflops_same_rounds"]
    if tr["flops_per_step"]:
        for key in ("steps_per_second", "scan100_steps_per_second"):
            achieved = tr["flops_per_step"] * tr[key] / 1e9
            tr[key.replace("steps_per_second", "achieved_gflops")] = achieved
            tr[key.replace("steps_per_second", "fraction_of_matmul_peak")] = achieved / peak
    # The dense-work limit (`dense_bound`): the step's matrix products alone, in the same rounds.
    bound = {**bound_info, "steps_per_second": statistics.median(rates["dense_bound"])}
    bound["achieved_gflops"] = bound["flops_per_step"] * bound["steps_per_second"] / 1e9
    bound["fraction_of_matmul_peak"] = bound["achieved_gflops"] / peak
    bound["scan100_step_fraction_of_bound"] = tr["scan100_steps_per_second"] / bound["steps_per_second"]
    if tr["flops_per_step"]:
        # The step's FLOP rate had it the bound's speed: the most its share of the matmul rate can be.
        bound["step_fraction_of_matmul_peak_at_bound"] = tr["flops_per_step"] * bound["steps_per_second"] / 1e9 / peak
    report["dense_bound"] = bound
    ratios = {}
    if torch_ref:
        ratios["dense_bound_vs_pytorch"] = bound["steps_per_second"] / torch_ref["steps_per_second"]
        ratios["train_steps_vs_pytorch"] = tr["steps_per_second"] / torch_ref["steps_per_second"]
        ratios["train_steps_scan100_vs_pytorch"] = tr["scan100_steps_per_second"] / torch_ref["steps_per_second"]
        ratios["sampling_vs_pytorch"] = torch_ref["sampling_seconds"] / report["sampling"]["seconds"]
    report["ratios"] = ratios
    for name, module in EXTRA_BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        report[name] = mod.run(quick=args.quick) if "quick" in inspect.signature(mod.run).parameters else mod.run()

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("matmul_f32", "train_step", "dense_bound", "sampling", "ratios")},
                     indent=2))
    if report.get("images"):
        from experiments.bench_images import summary

        print(summary(report["images"]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/bench.py", "results")
