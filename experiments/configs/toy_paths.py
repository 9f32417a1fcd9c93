"""The path settings of the toy experiments: a table label → (registered path name, keyword arguments).

`default.get_config(label)` (on the command line `--config experiments/configs/default.py:ve`) builds a run of
one of these; the toy table (`toy_table.py`) lists which labels it trains.
"""

import math

PATH_SETTINGS: dict[str, tuple[str, dict]] = {
    "cond_ot": ("cond_ot", {}),
    "vp": ("vp", {}),
    "ve": ("ve", dict(sigma_min=0.01, sigma_max=8.0)),
    "cosine": ("cosine", {}),
    "poly2": ("poly", dict(n=2.0)),
    "form": ("form", {}),
    "fm12": ("fm12", {}),
    "kac": ("kac", {}),
    "kac_a25_c2": ("kac", dict(a=25.0, c=2.0)),
    "hgf_osc": ("hgf_osc", dict(alpha=1.0, sigma_v=1.0)),
    "hgf_osc_a2": ("hgf_osc", dict(alpha=2.0, sigma_v=1.0)),
    "hgf_osc_a05": ("hgf_osc", dict(alpha=0.5, sigma_v=1.0)),
    "hgf_zero_ve": ("hgf_zero_ve", dict(sigma_min=0.01, sigma_max=8.0)),
    "hgf_zero_ot": ("hgf_zero_ot", {}),
    "hgf_force_harmonic": ("hgf_force_harmonic", dict(alpha=1.0, tau_max=0.5 * math.pi, n_steps=16)),
    "hgf_reflect": ("hgf_reflect", dict(half_width=3.0, sigma_v=1.0, tau_max=12.0)),
    # Kinetic-optimal path fitted to the checkerboard (the paper's toy): lambda_hat on a 4,000-point subsample,
    # gamma floored at 0.01; the same path is used on every toy dataset of the table.
    "ko": ("ko", dict(dataset="checkerboard")),
}

# One row per distinct path and setting: hgf_osc (= cosine), hgf_zero_ot (= cond_ot) and hgf_zero_ve (= ve) are
# proven identical to a row by the tests and not trained again.
TOY_TABLE_PATHS = ("cond_ot", "vp", "ve", "cosine", "poly2", "form", "fm12", "kac", "hgf_osc_a2", "hgf_osc_a05",
                   "ko")

# Dataset labels of the toy tables → (registered dataset name, keyword arguments).
DATASET_SETTINGS: dict[str, tuple[str, dict]] = {
    "moons": ("moons", {}),
    "8gaussians": ("8gaussians", {}),
    "checkerboard": ("checkerboard", {}),
    "spirals": ("spirals", {}),
    "circles": ("circles", {}),
    "grid": ("grid", {}),
    # The Kac paper's 2-D experiment: a 3×3 grid of near-Dirac modes.
    "grid_dirac": ("grid", dict(std=1e-2)),
}
