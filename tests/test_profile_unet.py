"""The per-op profiler joins trace events to HLO ops, classes them, and counts convolution FLOPs as XLA does."""

import time

import jax
import jax.numpy as jnp

from experiments import profile_unet


class _ConvGrad:
    """A duck-typed `bench_images.JaxStep`: the gradient of two 3×3 convolutions + SiLU, compiled."""

    def __init__(self):
        def f(ws, x):
            for w in ws:
                x = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
            return jnp.sum(x**2)

        self.args = ([0.1 * jnp.ones((3, 3, 8, 8)), 0.1 * jnp.ones((3, 3, 8, 8))], jnp.ones((4, 12, 12, 8)))
        self.compiled = jax.jit(jax.value_and_grad(f)).lower(*self.args).compile()
        cost = self.compiled.cost_analysis()
        self.flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    def steps(self, n):
        start = time.perf_counter()
        for _ in range(n):
            out = self.compiled(*self.args)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / n


def test_profile_classes_convolutions_and_counts_their_flops(tmp_path):
    js = _ConvGrad()
    rep = profile_unet.profile_step(js, steps=2, trace_dir=str(tmp_path))
    classes = {r["class"]: r for r in rep["by_class"]}
    # Forward (2), backward to the input (1: the first layer's input needs none) and to the filter (2).
    assert classes["conv fwd"]["ops"] == 2 and classes["conv bwd-filter"]["ops"] == 2
    assert classes["conv bwd-input"]["ops"] == 1
    conv_flops = sum(r["gflop"] for c, r in classes.items() if c.startswith("conv")) * 1e9
    # 5 convolutions of 2·4·12·12·9·8·8 FLOPs each (dense count). XLA's cost analysis leaves out the taps that
    # fall on the zero padding, a fraction (34/36)² of them remains, and adds the elementwise work (< 5 %).
    assert conv_flops == 5 * 2 * 4 * 12 * 12 * 9 * 8 * 8
    assert 0.95 * js.flops < conv_flops * (34 / 36) ** 2 <= js.flops
    assert abs(sum(r["percent"] for r in rep["by_class"]) - 100) < 1e-6
    assert rep["summed_thunk_ms"] > 0 and "conv fwd" in profile_unet.format_report(rep)
