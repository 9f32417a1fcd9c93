"""The CPU benchmark (`experiments.bench`, `make bench`); `bench.py:quick`: fewer repetitions (smoke test)."""

import ml_collections


def get_config(budget: str | None = None) -> ml_collections.ConfigDict:
    if budget not in (None, "quick"):
        raise ValueError(f"unknown bench budget {budget!r}; known: quick")
    # host_devices: CPU devices the process is split into before JAX starts (0 = one per core, 1 = none): the
    # U-Net section times its data-parallel step beside the single-device one (`experiments.bench_images`).
    return ml_collections.ConfigDict(dict(quick=budget == "quick", host_devices=0))
