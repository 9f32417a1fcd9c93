"""Default toy configuration: one path on one 2-D dataset, the MLP of the toy table, Adam + warm-up/cosine.

`get_config(label)` takes a label of `toy_paths.PATH_SETTINGS` (default "cond_ot"); on the command line
`--config experiments/configs/default.py:ve`. Fields (all read by `experiments.train`):
path.name / path.kwargs (a registered path and its arguments), dataset.name / dataset.kwargs, model.*, train.*
(optimiser, K = steps_per_call steps per compiled call, checkpoint_every / keep_checkpoints, max_bad_steps: the
divergence stop), eval.* (solver and step counts, adaptive solver, metrics), log.tensorboard / log.verbose.
"""

import ml_collections

from experiments.configs.toy_paths import PATH_SETTINGS


def spec(name: str, **kwargs) -> ml_collections.ConfigDict:
    """A `{name, kwargs}` block: a registry name and its keyword arguments."""
    return ml_collections.ConfigDict(dict(name=name, kwargs=ml_collections.ConfigDict(kwargs)))


def get_config(label: str | None = None) -> ml_collections.ConfigDict:
    label = label or "cond_ot"
    if label not in PATH_SETTINGS:
        raise ValueError(f"unknown toy path label {label!r}; known: {', '.join(PATH_SETTINGS)}")
    name, kwargs = PATH_SETTINGS[label]
    c = ml_collections.ConfigDict()
    c.path = spec(name, **kwargs)
    c.dataset = spec("moons")
    c.seed = 0

    c.model = ml_collections.ConfigDict(dict(hidden=256, depth=3, time_features=64))

    c.train = ml_collections.ConfigDict(
        dict(
            steps=2000,
            batch_size=256,
            learning_rate=2e-3,
            warmup_steps=100,
            final_lr_fraction=0.05,
            weight_decay=0.0,
            clip_norm=1.0,
            ema_decay=0.995,
            steps_per_call=100,
            time_sampler=spec("uniform"),
            checkpoint_every=1000,
            keep_checkpoints=3,
            max_bad_steps=100,
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            num_samples=2000,
            w2_samples=1000,
            solver="euler",
            step_counts=(4, 16, 100),
            adaptive_solver="dopri5",
            trajectory_steps=100,
            log_likelihood_samples=0,
            plots=True,
        )
    )
    c.log = ml_collections.ConfigDict(dict(tensorboard=True, verbose=False))
    return c
