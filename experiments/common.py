"""Small helpers every experiment entry point shares: the command line, config → objects, quiet logs.

Every entry point is `python -m experiments.<name> --config path/to/config.py --config.field=value` (ml_collections
`config_flags`) and runs through `run(main)`: a bad flag or config value is one line on stderr, not a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from experiments import registry
from fm_jax.checkpoint import ConfigMismatchError, NoUsableCheckpointError, StructureMismatchError
from fm_jax.training import DivergenceError


class ConfigError(ValueError):
    """A config field names something unknown or holds a value the run cannot use (raised before training)."""


def spec_kwargs(spec) -> dict[str, Any]:
    """`spec.kwargs` of a `{name, kwargs}` config block as a plain dict (tuples for lists)."""
    kwargs = spec.get("kwargs") if hasattr(spec, "get") else None
    if kwargs is None:
        return {}
    return kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)


def build_path(config):
    """The path of `config.path` = {name, kwargs}."""
    return registry.get_path(config.path.name, **spec_kwargs(config.path))


def build_toy_dataset(config):
    """`data_fn(key, n)` of `config.dataset` = {name, kwargs}."""
    return registry.get_dataset(config.dataset.name, **spec_kwargs(config.dataset))


def build_time_sampler(config):
    """The loss's time sampler of `config.train.time_sampler` = {name, kwargs}."""
    return registry.get_time_sampler(config.train.time_sampler.name, **spec_kwargs(config.train.time_sampler))


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition`."""
    if not condition:
        raise ConfigError(message)


def validate_train(t, *, steps_per_call: bool = True) -> None:
    """One-line errors for the training fields every trainer reads (`steps_per_call=False`: a trainer that
    runs one step per call and ignores the field)."""
    for field in ("steps", "batch_size", "steps_per_call"):
        require(isinstance(t[field], int) and t[field] >= 1, f"train.{field} must be a positive integer, got "
                f"{t[field]!r}")
    require(not steps_per_call or t.steps % t.steps_per_call == 0,
            f"train.steps={t.steps} must be a multiple of train.steps_per_call={t.steps_per_call}")
    require(float(t.learning_rate) > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    require(0.0 <= float(t.ema_decay) < 1.0, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    require(t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}")
    require(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    require(t.max_bad_steps >= 1, f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")


def quiet_logs(verbose: bool = False) -> None:
    """Orbax and absl INFO logs (dozens of lines per checkpoint) only when `verbose`; warnings always."""
    from absl import logging as absl_logging

    level = logging.INFO if verbose else logging.WARNING
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    for name in ("absl", "orbax", "orbax.checkpoint", "jax._src.distributed", "fm_jax"):
        logging.getLogger(name).setLevel(level)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError | AttributeError):
        text = text.strip("'\"")
    text = text or type(err).__name__
    return text.splitlines()[0] if not isinstance(err, ConfigError) else text


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        cause = err.__cause__ or err.__context__ or err
        msg = _one_line(err)
        if isinstance(cause, (AttributeError, KeyError)):
            msg = _one_line(cause)
            where = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and msg in a.split("=")[0]]
            msg = f"unknown config field {msg}" + (f" ({where[0]})" if where else "") + \
                "; the config file lists the fields it has"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def _exit(message: str, status: int) -> None:
    # The checkpointer is closed (its writes waited for) before we get here; leave without the interpreter's
    # shutdown, where Orbax's background threads can print tracebacks ("cannot schedule new futures").
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run(main: Callable[[Any, str], Any], default_config: str, default_workdir: str) -> None:
    """Define `--config` (ml_collections config file, fields overridable as `--config.a.b=value`) and
    `--workdir`, then `absl.app.run` `main(config, workdir)` with one-line errors: a flag or config error, or a
    `ConfigError` from validation, exits with `error: <message>` and status 2; a config mismatch with the
    run's checkpoints or a divergence with status 1; SIGTERM (checkpoint written) with status 143."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", default_config, "Configuration file (a get_config() module).")
    flags.DEFINE_string("workdir", default_workdir, "Directory for checkpoints, metrics, results and plots.")
    flags.DEFINE_bool("start_fresh", False, "Move the workdir's checkpoints aside (to checkpoints/previous/) and train "
                      "from step 0; without it a run never restarts from scratch where checkpoints exist.")

    def wrapped(argv):
        global START_FRESH
        del argv
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        START_FRESH = bool(flags.FLAGS.start_fresh)
        quiet_logs(bool(config.get("log", {}).get("verbose", False)))
        try:
            main(config, workdir)
        except ConfigError as err:
            _exit(f"error: {err}", 2)
        except (ConfigMismatchError, DivergenceError, NoUsableCheckpointError, StructureMismatchError) as err:
            _exit(f"error: {err}", 1)
        except Preempted as stop:
            _exit(str(stop), 143)  # 128 + SIGTERM: schedulers requeue

    app.run(wrapped, flags_parser=_parse_flags)


class Preempted(Exception):  # noqa: N818 - a stop, not an error
    """Training stopped on SIGTERM after writing a checkpoint; relaunching the same command resumes."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"stopped by SIGTERM at step {step}: checkpoint written to {directory}; relaunch the same "
                         f"command to resume")
        self.step = step


# Set from the `--start_fresh` flag by `run`; library callers of the trainers leave it False.
START_FRESH = False


def resume(ckpt, state):
    """`ckpt.restore_or_init(state)`, starting fresh (checkpoints moved aside, never deleted) only on request."""
    return ckpt.restore_or_init(state, start_fresh=START_FRESH)


def checkpointer(config, workdir: str, ignore_config_keys=("train.steps", "eval", "log")):
    """The run's `TrainingCheckpointer` under `<workdir>/checkpoints` (every `train.checkpoint_every` steps, keep
    `train.keep_checkpoints`); evaluation and logging fields, and the step budget, may change on resume."""
    from fm_jax.checkpoint import TrainingCheckpointer

    return TrainingCheckpointer(os.path.join(workdir, "checkpoints"), config, keep=config.train.keep_checkpoints,
                                save_every=config.train.checkpoint_every, ignore_config_keys=ignore_config_keys)
