"""Entry point: `python -m experiments.main --config experiments/configs/default.py --workdir workdir/run`.

Any config field can be overridden on the command line, e.g. `--config.path.name=vp --config.train.steps=500`,
`--config.eval.step_counts='(4, 16)'`; `--config experiments/configs/default.py:ve` picks a toy path setting.
Relaunching the same command resumes from `<workdir>/checkpoints`.
"""


from experiments import common


def main(config, workdir: str):
    from experiments.train import train_and_evaluate

    results = train_and_evaluate(config, workdir)
    summary = {k: v for k, v in results.items() if not k.startswith("_")}
    print(summary)
    print(f"outputs written to {workdir}")


if __name__ == "__main__":
    common.run(main, "experiments/configs/default.py", "workdir/run")
