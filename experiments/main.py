"""Entry point: `python -m experiments.main --config experiments/configs/default.py --workdir workdir/run`.

Any config field can be overridden on the command line, e.g. `--config.path.name=vp --config.train.steps=500`,
`--config.eval.step_counts='(4, 16)'`; `--config experiments/configs/default.py:ve` picks a toy path setting.
Relaunching the same command resumes from `<workdir>/checkpoints`.
"""

from absl import flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment configuration file.")
flags.DEFINE_string("workdir", "workdir/run", "Directory for checkpoints, metrics, results and plots.")


def main(config):
    from experiments.train import train_and_evaluate

    results = train_and_evaluate(config, FLAGS.workdir)
    summary = {k: v for k, v in results.items() if not k.startswith("_")}
    print(summary)
    print(f"outputs written to {FLAGS.workdir}")


if __name__ == "__main__":
    common.run(main)
