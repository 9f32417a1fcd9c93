"""A tiny configuration for smoke tests: a few dozen steps of a small MLP (`tiny.py:<label>` picks the path)."""

from experiments.configs import default


def get_config(label: str | None = None):
    c = default.get_config(label)
    c.model.hidden = 32
    c.model.depth = 2
    c.model.time_features = 8
    c.train.steps = 40
    c.train.steps_per_call = 20
    c.train.batch_size = 64
    c.train.checkpoint_every = 20
    c.eval.num_samples = 200
    c.eval.w2_samples = 200
    c.eval.step_counts = (4,)
    c.eval.trajectory_steps = 8
    c.eval.plots = False
    c.log.tensorboard = False
    return c
