"""The CPU benchmark (`experiments.bench`, `make bench`); `bench.py:quick`: fewer repetitions (smoke test)."""

import ml_collections


def get_config(budget: str | None = None) -> ml_collections.ConfigDict:
    if budget not in (None, "quick"):
        raise ValueError(f"unknown bench budget {budget!r}; known: quick")
    return ml_collections.ConfigDict(dict(quick=budget == "quick"))
