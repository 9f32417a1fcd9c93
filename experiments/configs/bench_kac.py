"""The Kac sampler/velocity benchmark (`experiments.bench_kac`): no settings beyond the output directory."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()
