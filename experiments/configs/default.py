"""Default toy configuration: one path on one 2-D dataset, the MLP of the toy table, Adam + warm-up/cosine."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.path = "cond_ot"
    c.dataset = "moons"
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
            time_sampler="uniform",
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            num_samples=2000,
            w2_samples=1000,
            solver="euler",
            step_counts=[4, 16, 100],
            adaptive_solver="dopri5",
            trajectory_steps=100,
            log_likelihood_samples=0,
            plots=True,
        )
    )
    return c
