"""Entry point: `python -m experiments.main --config experiments/configs/default.py --workdir workdir/run`.

Any config field can be overridden on the command line, e.g. `--config.path=vp --config.train.steps=500`.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment configuration file.")
flags.DEFINE_string("workdir", "workdir/run", "Directory for metrics, results and plots.")


def main(argv):
    del argv
    results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    summary = {k: v for k, v in results.items() if not k.startswith("_")}
    print(summary)
    print(f"outputs written to {FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main)
