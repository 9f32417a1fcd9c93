"""The MNIST-5k table: `experiments.image_table` with `configs/mnist_table.py` (kept as its own command).

    python -m experiments.mnist_table --config experiments/configs/mnist_table.py --workdir results/images

See `experiments.image_table`; writes `mnist_table.{md,csv}` and per-path work directories with sample grids.
"""

from __future__ import annotations

from experiments import common
from experiments.image_table import main

if __name__ == "__main__":
    common.run(main, "experiments/configs/mnist_table.py", "results/images")
