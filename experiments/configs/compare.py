"""The side-by-side comparison (`experiments.compare`): every toy-table path on four 2-D datasets (MNIST on request).

    python -m experiments.compare --config experiments/configs/compare.py --workdir results          # default
    python -m experiments.compare --config experiments/configs/compare.py:quick --workdir results/quick

Toy cells use the model, optimiser and evaluation sizes of `default.py` with `train.steps` per budget, `seeds`
seeds, Euler at `table.euler_steps`, Heun at the same NFE and adaptive Dopri5; `table.loglik_samples` held-out
points for the exact log-likelihood. MNIST is not in the default datasets (a few hundred U-Net steps leave the
models untrained; the MNIST table is `experiments.image_table` with `configs/mnist_table.py`); adding "mnist" to
`table.datasets` runs `table.mnist_steps` steps of `configs/mnist_<path>.py` per path and seed.
"""

import ml_collections

from experiments.configs import default
from experiments.configs.toy_paths import TOY_TABLE_PATHS

BUDGETS = {
    "default": dict(steps=3000, seeds=3, num_samples=1000, loglik_samples=200, mnist_steps=500, mnist_seeds=3),
    "quick": dict(steps=600, seeds=1, num_samples=500, loglik_samples=0, mnist_steps=100, mnist_seeds=1),
}


def get_config(budget: str | None = None) -> ml_collections.ConfigDict:
    budget = budget or "default"
    if budget not in BUDGETS:
        raise ValueError(f"unknown compare budget {budget!r}; known: {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    c = default.get_config()
    del c["path"], c["dataset"]  # set per cell from table.paths / table.datasets
    c.train.steps = b["steps"]
    c.eval.num_samples = b["num_samples"]
    c.eval.step_counts = (2, 4, 8, 16, 32, 100)
    c.eval.plots = False
    c.log.tensorboard = False
    c.table = ml_collections.ConfigDict(dict(
        budget=budget, paths=TOY_TABLE_PATHS, datasets=("moons", "8gaussians", "checkerboard", "grid_dirac"),
        seeds=b["seeds"], loglik_samples=b["loglik_samples"], mnist_steps=b["mnist_steps"],
        mnist_seeds=b["mnist_seeds"], workers=0))  # workers: toy cells side by side (`experiments/pool.py`)
    return c
