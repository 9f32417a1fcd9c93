"""Preemption-safe Orbax checkpoints of a `TrainState`: keep-N, save-every-N, config and git revision, resume.

`TrainingCheckpointer` wraps an `orbax.checkpoint.CheckpointManager`. Each checkpoint step directory holds two
items: `state` (the `TrainState`, any sharding, written asynchronously) and `metadata` (JSON: the run's config,
the git revision of the code, the JAX version, the time). `config.json` and `git_revision.txt` are also written
beside the step directories for people reading the work directory.

Resume (`restore_or_init`) restores the newest checkpoint whose config matches; a checkpoint that cannot be read
(half-written, truncated, garbled) gives a `CorruptCheckpointWarning`, is moved aside to `<dir>/corrupt/`, and
the previous one is used, so at most one save interval is lost. A checkpoint written under a different config
raises `ConfigMismatchError` naming every differing key (keys listed in `ignore_config_keys` may differ, e.g. the
total number of steps when a run is extended).

Preemption: on SIGTERM (the notice Cloud TPU VMs and most schedulers send before killing a job) a flag is set;
the next `save(state)` writes a checkpoint whatever the step, waits for it to reach disk and returns True so the
training loop can exit. Never saving inside the signal handler keeps the saved state a whole step. With several
processes the flag is agreed on with an all-gather every `preemption_check_every` steps, so all processes save
the same step.

Resuming is exact: a restored state equals the saved one bit for bit, and with per-step keys
fold_in(key, step) and data that is a function of the step, N + N steps with a kill in between give the same
parameters and optimiser state as 2N straight.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from .training import TrainState

__all__ = [
    "ConfigMismatchError",
    "CorruptCheckpointWarning",
    "TrainingCheckpointer",
    "config_diff",
    "config_to_dict",
    "git_revision",
]

logger = logging.getLogger(__name__)


class ConfigMismatchError(ValueError):
    """A checkpoint was written under a config that differs from the one given (`differences` lists the keys)."""

    def __init__(self, message: str, differences: Sequence[str]):
        super().__init__(message)
        self.differences = list(differences)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be read; an older one is used instead."""


# ----------------------------------------------------------------------------------------------------------------
# Config and code revision
# ----------------------------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return _jsonable(np.asarray(x).tolist())
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready nested dict from a Mapping, an `ml_collections.ConfigDict` (`to_dict`) or a dataclass."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a Mapping, a ConfigDict or a dataclass, got {type(config).__name__}")
    # A JSON round trip, so that a fresh config compares equal to one read back (tuples → lists, ...).
    return json.loads(json.dumps(_jsonable(config)))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


def config_diff(saved: Any, given: Any, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys at which two configs differ, each as "key: saved → given" (missing values shown as <absent>).

    A key in `ignore` also ignores everything below it ("train" ignores "train.steps").
    """
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(given))
    ignored = lambda k: any(k == p or k.startswith(p + ".") for p in ignore)
    out = []
    for k in sorted(set(a) | set(b)):
        if ignored(k):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            out.append(f"{k}: {va!r} → {vb!r}")
    return out


def git_revision(directory: str | None = None) -> str:
    """`git rev-parse HEAD` of the repository holding `directory` (default: this package), "+dirty" if modified.

    Returns "unknown" outside a git checkout or without git.
    """
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                                           timeout=10, check=True).stdout.strip()
        revision = run("rev-parse", "HEAD")
        if run("status", "--porcelain", "--untracked-files=no"):
            revision += "+dirty"
        return revision
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# The checkpointer
# ----------------------------------------------------------------------------------------------------------------


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete pytree: the target layout of a restore."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class TrainingCheckpointer:
    """Orbax checkpoints of a `TrainState` with keep-N, save-every-N, config checks, corrupt-step fallback, SIGTERM.

    Args:
        directory: the checkpoint directory (created if needed): a local path or any path Orbax accepts (gs://...).
        config: the run's config (Mapping, ConfigDict or dataclass), stored with every checkpoint and compared on
            restore. keep: number of most recent checkpoints kept. save_every: `save` writes when
            step % save_every == 0. ignore_config_keys: dotted keys allowed to differ on restore.
        handle_sigterm: install a SIGTERM handler (main thread only) that requests a final save.
        async_save: write in a background thread (the device → host copy still happens inside `save`).
        preemption_check_every: with several processes, agree on the preemption flag every this many steps.
        git_dir: where to read the git revision (default: this package's checkout).
    Example:
        >>> ckpt = TrainingCheckpointer(workdir, config, keep=3, save_every=1000)
        >>> state, resumed = ckpt.restore_or_init(state)
        >>> while int(state.step) < total:
        ...     state, metrics = step(state, batch_fn(state.step), path)
        ...     if ckpt.save(state):          # True after SIGTERM: a final checkpoint is on disk
        ...         break
        >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: Any = None,
        *,
        keep: int = 3,
        save_every: int = 1000,
        ignore_config_keys: Sequence[str] = (),
        handle_sigterm: bool = True,
        async_save: bool = True,
        preemption_check_every: int = 10,
        git_dir: str | None = None,
    ):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if preemption_check_every < 1:
            raise ValueError(f"preemption_check_every must be >= 1, got {preemption_check_every}")
        path = epath.Path(directory)
        self.directory = str(path if "://" in os.fspath(directory) else path.absolute())
        self.config = config_to_dict(config)
        self.keep = keep
        self.save_every = save_every
        self.ignore_config_keys = tuple(ignore_config_keys)
        self.preemption_check_every = preemption_check_every
        self.git_revision = git_revision(git_dir)
        self._async = async_save
        self._sigterm = threading.Event()
        self._preempted = False
        self._previous_handler = None
        self._manager = self._new_manager()
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=self._async)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    # -- preemption --------------------------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame) -> None:
        del frame
        # Only set a flag: the state in flight may be mid-step (or donated); `save` writes a whole step.
        self._sigterm.set()
        logger.warning("signal %d received: a checkpoint will be written at the next save() call", signum)

    def request_stop(self) -> None:
        """What SIGTERM does: make the next `save` write a checkpoint and return True."""
        self._sigterm.set()

    def _check_preemption(self, step: int) -> bool:
        if self._preempted:
            return True
        local = self._sigterm.is_set()
        if jax.process_count() > 1:
            if step % self.preemption_check_every:
                return False
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
            local = bool(np.any(flags))
        self._preempted = local
        return local

    @property
    def preempted(self) -> bool:
        """True once a stop was requested (SIGTERM or `request_stop`) and agreed on by all processes."""
        return self._preempted

    # -- saving ------------------------------------------------------------------------------------------------

    def _metadata(self, step: int) -> dict[str, Any]:
        return {"config": self.config, "git_revision": self.git_revision, "step": step,
                "jax_version": jax.__version__, "process_count": jax.process_count(),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def _write_beside(self) -> None:
        if jax.process_index() != 0:
            return
        root = epath.Path(self.directory)
        for name, text in (("config.json", json.dumps(self.config, indent=2, sort_keys=True)),
                           ("git_revision.txt", self.git_revision + "\n")):
            tmp = root / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(root / name)  # never a half-written file under the final name

    def save(self, state: TrainState, *, step: int | None = None, force: bool = False) -> bool:
        """Save `state` if step % save_every == 0, if `force`, or if a stop was requested; return whether to stop.

        Args:
            state: the `TrainState` (any sharding; every process calls `save` at the same steps).
            step: the step number (default: `int(state.step)`, a host sync).
            force: save whatever the step.
        Returns:
            True after a stop request (SIGTERM): the final checkpoint has then been written and waited for.
        """
        step = int(state.step) if step is None else int(step)
        stop = self._check_preemption(step)
        if force or stop or step % self.save_every == 0:
            if step not in self._manager.all_steps():
                metadata = self._metadata(step)
                self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 metadata=ocp.args.JsonSave(metadata)), force=True)
                self._write_beside()
            if stop:
                self._manager.wait_until_finished()
                logger.warning("stop requested: checkpoint at step %d written to %s", step, self.directory)
        return stop

    def wait_until_finished(self) -> None:
        """Block until every pending asynchronous save has reached disk."""
        self._manager.wait_until_finished()

    # -- restoring ---------------------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step (readable or not), or None."""
        return self._manager.latest_step()

    def check_config(self, step: int) -> dict[str, Any]:
        """The metadata of checkpoint `step`; raises `ConfigMismatchError` if its config differs from this run's."""
        metadata = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())).metadata
        if metadata is None or "config" not in metadata:
            raise ValueError(f"checkpoint step {step} in {self.directory} has no stored config")
        diff = config_diff(metadata["config"], self.config, self.ignore_config_keys)
        if diff:
            lines = "\n  ".join(diff)
            raise ConfigMismatchError(
                f"the checkpoint at step {step} in {self.directory} was written with a different config "
                f"(git revision {metadata.get('git_revision', 'unknown')}); differing keys (checkpoint → given):"
                f"\n  {lines}\nUse a new directory, restore with the checkpoint's config (config.json), or pass "
                f"ignore_config_keys for keys that may change.",
                [d.split(":", 1)[0] for d in diff],
            )
        return metadata

    def restore(self, target: TrainState, step: int | None = None) -> TrainState:
        """Restore checkpoint `step` (default: the newest) into the layout (shapes, dtypes, shardings) of `target`.

        Raises `ConfigMismatchError` if the checkpoint's config differs, FileNotFoundError if there is none.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.check_config(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)))
        return self._manager.restore(step, args=args).state

    def _quarantine(self, step: int) -> None:
        """Move an unreadable step out of Orbax's sight (kept for inspection, not deleted)."""
        if jax.process_index() == 0:
            source = epath.Path(self.directory) / str(step)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
            destination = epath.Path(self.directory) / "corrupt" / f"{step}-{stamp}"
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.exists():
                source.rename(destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"fm_jax_checkpoint_quarantine_{step}")
        self._manager.close()
        self._manager = self._new_manager()

    def restore_or_init(self, state: TrainState) -> tuple[TrainState, bool]:
        """Resume from the newest readable checkpoint, or return `state` unchanged when there is none.

        `state` is a freshly initialised `TrainState` placed as training wants it (its shardings are the restore
        target). A step that fails to load gives a `CorruptCheckpointWarning`, is moved to `<dir>/corrupt/` and the
        previous step is tried. A config mismatch is never skipped: it raises `ConfigMismatchError`.

        Returns:
            (state, resumed) with resumed True when a checkpoint was restored.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                self.check_config(step)
            except ConfigMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - any read error means this step is unusable
                failures.append(self._fallback(step, err))
                continue
            try:
                restored = self.restore(state, step)
            except Exception as err:  # noqa: BLE001
                failures.append(self._fallback(step, err))
                continue
            logger.info("resumed from step %d in %s", step, self.directory)
            return restored, True
        if failures:
            raise RuntimeError(f"no checkpoint in {self.directory} could be restored: {'; '.join(failures)}")
        return state, False

    def _fallback(self, step: int, err: Exception) -> str:
        older = [s for s in self._manager.all_steps() if s < step]
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        then = f"resuming from step {max(older)} instead" if older else "no older checkpoint is left"
        warnings.warn(
            f"checkpoint step {step} in {self.directory} could not be read ({reason}); it was moved to "
            f"{os.path.join(self.directory, 'corrupt')}; {then}",
            CorruptCheckpointWarning,
            stacklevel=3,
        )
        self._quarantine(step)
        return f"step {step}: {reason}"

    # -- lifetime ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for pending saves, release the manager and restore the previous SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def __enter__(self) -> TrainingCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
