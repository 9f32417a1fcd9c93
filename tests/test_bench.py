"""The toy benchmark's dense-work limit (`experiments.bench.dense_bound`)."""


from experiments import bench


def test_dense_bound_counts_the_toy_steps_matrix_products_and_runs():
    info, run = bench.dense_bound(quick=True)
    # Written-out FLOPs: forward, weight and input gradients of 66→256→256→256→2 at batch 256, less the first
    # layer's input gradient; XLA's cost analysis of the 100-step scan counts the body once or 100 times, and adds
    # the SGD update's few element-wise FLOPs (< 1 %).
    assert info["flops_per_step"] == 3 * 2 * 256 * (66 * 256 + 2 * 256 * 256 + 256 * 2) - 2 * 256 * 66 * 256
    xla = info["xla_cost_analysis_flops"]
    assert min(abs(xla / info["flops_per_step"] - 1), abs(xla / (100 * info["flops_per_step"]) - 1)) < 0.01
    assert run() > 0
