"""Preemption-safe Orbax checkpoints of a `TrainState`: keep-N, save-every-N, config and git revision, resume.

`TrainingCheckpointer` wraps an `orbax.checkpoint.CheckpointManager`. Each checkpoint step directory holds two
items: `state` (the `TrainState`, any sharding, written asynchronously) and `metadata` (JSON: the run's config,
the git revision of the code, the JAX version, the time). `config.json` and `git_revision.txt` are also written
beside the step directories for people reading the work directory.

Resume (`restore_or_init`) restores the newest checkpoint, telling three failures apart (see
`TrainingCheckpointer` for the precise contract):
- unreadable data (half-written, truncated, garbled, missing files): `CorruptCheckpointWarning`, the previous
  checkpoint is used and the unreadable newer ones are moved aside to `<dir>/corrupt/` (never deleted), so at most
  one save interval is lost; if no checkpoint is readable, `NoUsableCheckpointError` and nothing is moved;
- a structure mismatch (the code or model changed: a leaf added, removed or of another shape or dtype):
  `StructureMismatchError` naming the leaves that differ; nothing on disk is touched;
- a different config: `ConfigMismatchError` naming every differing key (keys listed in `ignore_config_keys` may
  differ, e.g. the total number of steps when a run is extended); nothing on disk is touched.
A directory that holds checkpoints (readable, unreadable or moved to `corrupt/`) never starts silently from step
0: only `restore_or_init(state, start_fresh=True)` does, after moving them aside to `<dir>/previous/<time>/`.

Orbax's INFO logging (a line or more per save) is hidden unless `verbose=True`.

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
import re
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
    "NoUsableCheckpointError",
    "StructureMismatchError",
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


class StructureMismatchError(ValueError):
    """A checkpoint's tree differs from the given state's (`differences` lists the leaf paths, e.g. "params/w1")."""

    def __init__(self, message: str, differences: Sequence[str]):
        super().__init__(message)
        self.differences = list(differences)


class NoUsableCheckpointError(RuntimeError):
    """The directory holds checkpoints (or moved-aside ones) but none can be restored; nothing was changed."""


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be read; an older one is used instead."""


class _OrbaxLogFilter(logging.Filter):
    """Drops Orbax's records below WARNING (all of them while `probing` a resume) unless `verbose`."""

    verbose = False
    probing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return not self.probing and record.levelno >= logging.WARNING


_ORBAX_LOG_FILTER = _OrbaxLogFilter()


def _install_orbax_log_filter(verbose: bool) -> None:
    # Orbax logs through absl, i.e. the Python logger "absl"; the filter touches only records from Orbax's files.
    _ORBAX_LOG_FILTER.verbose = verbose
    absl_logger = logging.getLogger("absl")
    if _ORBAX_LOG_FILTER not in absl_logger.filters:
        absl_logger.addFilter(_ORBAX_LOG_FILTER)


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\[source locations='[^']*'\]")


def _reason(err: BaseException) -> str:
    """One readable line for an exception: its type and first message line, without object reprs."""
    text = _ADDRESS.sub("", str(err)).strip().splitlines()
    line = " ".join(text[0].split())[:240] if text else ""
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _leaf_name(path) -> str:
    """'params/w1' for a key path, whatever the container (dataclass field, dict key, sequence index)."""
    parts = []
    for entry in path:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _leaf_layouts(tree: Any) -> dict[str, str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_leaf_name(p): f"{tuple(v.shape)} {np.dtype(v.dtype).name}" for p, v in flat}


def _structure_diff(saved: dict[str, str], given: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(saved) | set(given)):
        a, b = saved.get(name, "<absent>"), given.get(name, "<absent>")
        if a != b:
            out.append(f"{name}: {a} → {b}")
    return out


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
        verbose: show Orbax's INFO logging (hidden by default; its warnings and errors always show).

    Resume contract of `restore_or_init(state, start_fresh=False)` (checkpoints are tried newest first):
        - no checkpoint and nothing in `<dir>/corrupt/`: returns `(state, False)` (`<dir>/previous/`, written only
          on request, does not count);
        - the newest readable checkpoint fits: returns `(restored, True)`. Each newer unreadable one (truncated,
          garbled or missing files) gives one `CorruptCheckpointWarning` "checkpoint step S in DIR could not be
          read (Type: first line of the error); it was moved to DIR/corrupt/S-<time>; resuming from step R
          instead" and is moved there (not deleted);
        - a checkpoint's config differs (outside `ignore_config_keys`): `ConfigMismatchError` (a ValueError;
          `.differences` = dotted keys); nothing on disk changes;
        - a checkpoint's tree does not fit `state` (a leaf added, removed, or of another shape/dtype: the code or
          model changed): `StructureMismatchError` (a ValueError; `.differences` = leaf paths such as
          "params/w1", message lines "params/w1: (3, 32) float32 → (3, 64) float32"); nothing on disk changes;
        - no checkpoint readable, or none left but some under `corrupt/`: `NoUsableCheckpointError` (a
          RuntimeError) listing each step and why; nothing on disk changes.
        `start_fresh=True` is the only way to start from step 0 in a directory that holds checkpoints: every
        step directory and `corrupt/` are moved to `<dir>/previous/<time>/` (nothing is deleted), a warning
        says so, and `(state, False)` is returned.
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
        verbose: bool = False,
    ):
        _install_orbax_log_filter(verbose)
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
        # Handlers given up front (not just item names), so that a fresh manager can read a step's tree metadata.
        handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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

        Raises `ConfigMismatchError` if the checkpoint's config differs, `StructureMismatchError` if its tree does
        not fit `target`, FileNotFoundError if there is none.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.check_config(step)
        self._check_structure(step, self._saved_layouts(step), _leaf_layouts(_abstract(target)))
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)))
        return self._manager.restore(step, args=args).state

    def _saved_layouts(self, step: int) -> dict[str, str]:
        """Leaf path → "shape dtype" of the state stored at `step` (from Orbax's metadata; raises if unreadable)."""
        metadata = self._manager.item_metadata(step)
        tree = metadata.get("state") if hasattr(metadata, "get") else None
        if tree is None:
            raise FileNotFoundError(f"the state of step {step} is missing")
        return _leaf_layouts(tree)

    def _check_structure(self, step: int, saved: dict[str, str], given: dict[str, str]) -> None:
        diff = _structure_diff(saved, given)
        if diff:
            lines = "\n  ".join(diff[:20]) + (f"\n  ... and {len(diff) - 20} more" if len(diff) > 20 else "")
            raise StructureMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not fit the given state: "
                f"{len(diff)} leaves differ (checkpoint → given):\n  {lines}\nNothing was changed on disk. "
                "The model or optimiser changed since it was written: restore with the code that wrote it "
                "(git_revision.txt), or start over with another directory or restore_or_init(..., start_fresh=True).",
                [d.split(":", 1)[0] for d in diff],
            )

    def _move_aside(self, moves: Sequence[tuple[str, epath.Path]]) -> None:
        """Rename entries of the directory (name → destination path) on process 0, then reopen the manager."""
        if jax.process_index() == 0:
            for name, destination in moves:
                source = epath.Path(self.directory) / name
                if source.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    source.rename(destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"fm_jax_checkpoint_move_{moves[0][1].name}")
        self._manager.close()
        self._manager = self._new_manager()

    def _has_corrupt(self) -> bool:
        corrupt = epath.Path(self.directory) / "corrupt"
        return corrupt.exists() and any(corrupt.iterdir())

    def restore_or_init(self, state: TrainState, *, start_fresh: bool = False) -> tuple[TrainState, bool]:
        """Resume from the newest readable checkpoint, or return `state` in a directory without checkpoints.

        `state` is a freshly initialised `TrainState` placed as training wants it (its shardings are the restore
        target). The contract (which error, what is moved, `start_fresh`) is in the class docstring.

        Returns:
            (state, resumed) with resumed True when a checkpoint was restored.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        if start_fresh:
            held = [str(s) for s in steps] + (["corrupt"] if self._has_corrupt() else [])
            if held:
                destination = epath.Path(self.directory) / "previous" / stamp
                self._move_aside([(name, destination / name) for name in held])
                logger.warning("start_fresh: %d checkpoint entries moved to %s; training starts from step 0",
                               len(held), destination)
            return state, False
        # Orbax logs each unreadable file it meets (at ERROR, with file contents): the warning or error raised
        # here says the same in one line, so its own records are held back while probing.
        _ORBAX_LOG_FILTER.probing = True
        try:
            return self._resume(state, steps, stamp)
        finally:
            _ORBAX_LOG_FILTER.probing = False

    def _resume(self, state: TrainState, steps: list[int], stamp: str) -> tuple[TrainState, bool]:
        given = _leaf_layouts(_abstract(state))
        unreadable: list[tuple[int, str]] = []
        for step in steps:
            try:
                saved = self._saved_layouts(step)
                self.check_config(step)
            except ConfigMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - unreadable metadata: this step is unusable
                unreadable.append((step, _reason(err)))
                continue
            self._check_structure(step, saved, given)
            try:
                restored = self.restore(state, step)
            except Exception as err:  # noqa: BLE001 - the layout fits, so a failed read is damaged data
                unreadable.append((step, _reason(err)))
                continue
            for bad, reason in unreadable:
                destination = epath.Path(self.directory) / "corrupt" / f"{bad}-{stamp}"
                warnings.warn(
                    f"checkpoint step {bad} in {self.directory} could not be read ({reason}); it was moved to "
                    f"{destination}; resuming from step {step} instead",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
                self._move_aside([(str(bad), destination)])
            logger.info("resumed from step %d in %s", step, self.directory)
            return restored, True
        if unreadable:
            listing = "\n  ".join(f"step {s}: {r}" for s, r in unreadable)
            raise NoUsableCheckpointError(
                f"no checkpoint in {self.directory} could be restored; nothing was changed on disk:\n  {listing}\n"
                "Inspect or remove them yourself, or pass start_fresh=True to move them to previous/ and start "
                "from step 0."
            )
        if self._has_corrupt():
            raise NoUsableCheckpointError(
                f"{self.directory} holds no checkpoint but unreadable ones were moved aside to corrupt/: refusing "
                "to start from step 0 silently. Move one back to retry it, or pass start_fresh=True to start from "
                "step 0."
            )
        return state, False

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
