"""Small helpers every experiment entry point shares: the command line, config → objects, quiet logs.

Every entry point is `python -m experiments.<name> --config path/to/config.py --config.field=value` (ml_collections
`config_flags`) and runs through `run(main)`: a bad flag or config value is one line on stderr, not a traceback.
"""

from __future__ import annotations

import functools
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


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _fields(tree, prefix: str = ""):
    """(dotted name, value) of every leaf of a nested config dict."""
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _print_help(argv) -> None:
    """`--help`: the entry point's docstring, its flags, and every field of the config (after the other flags on
    the line, so `--config other.py --help` lists other.py's fields) with its value; `--helpfull` adds absl's
    flags."""
    from absl import flags
    from ml_collections import config_flags

    full = "--helpfull" in argv
    flags.FLAGS([a for a in argv if a not in _HELP_FLAGS])
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    lines = [doc, "", "flags:"] if doc else ["flags:"]
    for name in ("config", "workdir", "start_fresh"):
        flag = flags.FLAGS[name]
        value = config_flags.get_config_filename(flag) if name == "config" else flag.value
        lines.append(f"  --{name}: {flag.help} (now: {value!r})")
    config = flags.FLAGS.config
    lines += ["", "config fields (override any with --config.<field>=value):"]
    lines += [f"  --config.{name}={value!r}" for name, value in _fields(config.to_dict())]
    if full:
        lines += ["", flags.FLAGS.get_help()]
    else:
        lines += ["", "Try --helpfull for absl's own flags too."]
    print("\n".join(lines))
    sys.exit(0)


def _parse_flags(argv):
    from absl import flags

    try:
        if any(a in _HELP_FLAGS for a in argv[1:]):
            _print_help(argv)
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
        if START_FRESH:  # spawned table workers (`experiments.pool`) import this module afresh: tell them too
            os.environ[START_FRESH_ENV] = "1"
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


# Set from the `--start_fresh` flag by `run` (and, through the environment, in the workers it spawns); library
# callers of the trainers leave it False.
START_FRESH_ENV = "FM_JAX_START_FRESH"
START_FRESH = os.environ.get(START_FRESH_ENV) == "1"


def resume(ckpt, state):
    """`ckpt.restore_or_init(state)`, starting fresh (checkpoints moved aside, never deleted) only on request."""
    return ckpt.restore_or_init(state, start_fresh=START_FRESH)


def checkpointer(config, workdir: str, ignore_config_keys=("train.steps", "eval", "log")):
    """The run's `TrainingCheckpointer` under `<workdir>/checkpoints` (every `train.checkpoint_every` steps, keep
    `train.keep_checkpoints`); evaluation and logging fields, and the step budget, may change on resume."""
    from fm_jax.checkpoint import TrainingCheckpointer

    return TrainingCheckpointer(os.path.join(workdir, "checkpoints"), config, keep=config.train.keep_checkpoints,
                                save_every=config.train.checkpoint_every, ignore_config_keys=ignore_config_keys)


# -- the training skeleton of the paper scripts ------------------------------------------------------------------

def fit_steps(state, make_advance: Callable[[int], Callable], num_steps: int, *, steps_per_call: int,
              workdir: str | None = None, name: str = "run", config: Any = None, checkpoint_every: int | None = None,
              max_bad_steps: int = 100):
    """Train `state` to exactly `num_steps` steps with `fm_jax.training.fit`; returns (state, last metrics row).

    `make_advance(k)` gives `advance(state) -> (state, metrics)` of k compiled steps; it is asked for
    k = `steps_per_call` and, when `num_steps` is not a multiple of it, once for the remainder (so the run makes
    exactly the steps asked for). With a `workdir`, the run has its own directory `<workdir>/runs/<name>`:
    Orbax checkpoints every `checkpoint_every` steps (a multiple of `steps_per_call`; default: after every call)
    and at the end (`checkpoints/`, the newest kept, `config` stored and compared on resume),
    `metrics.csv`; relaunching resumes, and a finished run is restored instead of retrained (its last row comes
    from `metrics.csv`). Raises `Preempted` after SIGTERM (a checkpoint is on disk) and `DivergenceError`.
    """
    from fm_jax.checkpoint import TrainingCheckpointer
    from fm_jax.training import MetricsWriter, fit

    require(isinstance(steps_per_call, int) and steps_per_call >= 1,
            f"steps per call must be a positive integer, got {steps_per_call!r}")
    checkpoint_every = steps_per_call if checkpoint_every is None else checkpoint_every
    require(isinstance(checkpoint_every, int) and checkpoint_every >= 1 and checkpoint_every % steps_per_call == 0,
            f"checkpoint_every must be a positive multiple of {steps_per_call} (the steps of one call), got "
            f"{checkpoint_every!r}")
    if workdir is None:
        ckpt = writer = None
    else:
        directory = os.path.join(workdir, "runs", name)
        ckpt = TrainingCheckpointer(os.path.join(directory, "checkpoints"), config, keep=1, save_every=checkpoint_every)
    rows: list[dict] = []
    try:
        if ckpt is not None:
            state, _ = resume(ckpt, state)
            writer = MetricsWriter(directory, start_step=int(state.step))
        hooks = [lambda step, s, row: rows.append(row)] + ([writer] if writer is not None else [])
        whole = num_steps - num_steps % steps_per_call
        for target, k in ((whole, steps_per_call), (num_steps, num_steps - whole)):
            if k and int(state.step) < target:
                result = fit(state, make_advance(k), target, steps_per_call=k, checkpointer=ckpt, hooks=hooks,
                             max_bad_steps=max_bad_steps)
                state = result.state
                if result.preempted:
                    raise Preempted(result.step, ckpt.directory)
    finally:
        if ckpt is not None:
            if writer is not None:
                writer.close()
            ckpt.close()
    if not rows and workdir is not None:
        rows = _csv_rows(os.path.join(directory, "metrics.csv"))
    return state, rows[-1] if rows else {}


def _csv_rows(filename: str) -> list[dict[str, float]]:
    import csv

    if not os.path.exists(filename):
        return []
    with open(filename, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def init_seed_states(init: Callable, init_keys, fit_keys, optimizer):
    """`TrainState`s of S seeds stacked on a leading axis (params `init(init_keys[i])`, step key `fit_keys[i]`),
    with one shared scalar step: the state `seed_loop` trains."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from fm_jax.training import init_train_state

    @jax.jit
    def states(init_keys, fit_keys):
        stacked = jax.vmap(lambda ki, kf: init_train_state(kf, init(ki), optimizer))(init_keys, fit_keys)
        return eqx.tree_at(lambda s: s.step, stacked, jnp.zeros((), jnp.int32))

    return states(init_keys, fit_keys)


@functools.cache
def seed_loop(loss: Callable, optimizer, steps: int, *, ema_decay: float = 0.0):
    """`loop(states, data) -> (states, metrics)`: `steps` full-batch steps of `fm_jax.training.train_step` for S
    seeds at once (one compiled call; `states` from `init_seed_states`, data leaves with a leading S axis).

    `loss(params, key, data) -> scalar` is one seed's loss; its key is `fold_in(seed key, step)`. The metrics are
    per step (K,): the loss averaged over seeds, and the steps skipped by any seed (a non-finite loss or gradient).
    Cached: the same loss and optimizer objects reuse the compiled loop.
    """
    import jax
    import jax.numpy as jnp

    from fm_jax.training import TrainState, train_step

    def loss_fn(params, key, batch, data):
        del batch
        value = loss(params, key, data)
        return value, {"loss": value}

    def one(state, data):
        def body(s, _):
            s, m = train_step(s, None, data, loss_fn=loss_fn, optimizer=optimizer, ema_decay=ema_decay)
            return s, {"loss": m["loss"], "skipped": m["skipped"]}

        return jax.lax.scan(body, state, None, length=steps)

    axes = TrainState(step=None, params=0, opt_state=0, ema_params=0, key_data=0)

    def loop(states, data):
        states, m = jax.vmap(one, in_axes=(axes, 0), out_axes=(axes, 1))(states, data)
        return states, {"loss": jnp.mean(m["loss"], 1), "skipped": jnp.max(m["skipped"], 1)}

    return jax.jit(loop, donate_argnums=0)


def train_seeds(states, loss: Callable, optimizer, data, num_steps: int, **fit_kwargs):
    """`fit_steps` of `seed_loop(loss, optimizer, k)` on the fixed full-batch `data`: (states, last row)."""
    return fit_steps(states, lambda k: functools.partial(seed_loop(loss, optimizer, k), data=data), num_steps,
                     **fit_kwargs)
