"""The KO data-separation study (`experiments.ko_lambda`): `num_noise` noise draws per lambda_hat estimate;
`ko_lambda.py:quick` is a smaller grid of random datasets."""

import ml_collections


def get_config(budget: str | None = None) -> ml_collections.ConfigDict:
    if budget not in (None, "quick"):
        raise ValueError(f"unknown ko_lambda budget {budget!r}; known: quick")
    return ml_collections.ConfigDict(dict(num_noise=400, quick=budget == "quick"))
