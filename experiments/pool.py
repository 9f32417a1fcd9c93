"""Independent table cells in parallel: one process per CPU core, each running XLA:CPU on a single thread.

Why: the toy MLP's operations are small (256-wide matmuls on batches of 256), and on this project's 2-core machine
one process with XLA's two intra-op threads trains at about 220 steps/s, one single-threaded process pinned to a
core at about 236, and two of them side by side at about 205 each (`make run`'s cell, measured on one day): 1.9
times the throughput of the threaded process. Accelerator backends are left alone (`workers=0`
resolves to 1 there).

`map_cells(fn, items, workers)` yields `fn(item)` in the order of `items`. `fn` must be a module-level function
(it is pickled into `spawn`ed workers, which import its module afresh) and its results picklable (NumPy, not
device arrays). A worker's exception is re-raised in the caller; SIGTERM or Ctrl-C in the caller is passed on
to the workers (each trainer writes its checkpoint and stops) before the caller stops.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# XLA:CPU on one thread: no Eigen thread pool, one intra-op thread.
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """0 ("auto") → one worker per core on the CPU backend and 1 on an accelerator; an int ≥ 1 as given."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be 0 (one per CPU core) or a positive integer, got {workers!r}")
    if workers == 0:
        import jax

        return cpu_cores() if jax.default_backend() == "cpu" else 1
    return workers


class Cancelled(Exception):
    """A cell not started, or abandoned outside training, because the caller was stopping."""


_STOP = None  # the caller's stop event, in a worker


def _init_worker(stop, cores) -> None:
    global _STOP
    _STOP = stop
    # One core each: XLA:CPU keeps helper threads besides its one compute thread, and unpinned workers halve each
    # other's speed (two unpinned single-threaded workers: 115 steps/s each; pinned: 235).
    try:
        os.sched_setaffinity(0, {cores.get_nowait()})
    except (AttributeError, queue.Empty, OSError):
        pass
    # The caller sends SIGTERM to stop: a worker inside `fit` checkpoints and stops (the checkpointer's own handler
    # replaces this one while it trains); elsewhere in a cell (setting up, evaluating) it abandons the cell at
    # once, which loses nothing a relaunch cannot redo from the checkpoints. An idle worker ignores it (the
    # executor's shutdown ends it). No worker takes a new cell once `stop` is set.
    signal.signal(signal.SIGTERM, _abandon_cell)


_IN_CELL = False  # in a worker: whether it is running a cell now


def _abandon_cell(signum, frame):
    if _IN_CELL:
        raise Cancelled("stopped by SIGTERM")


def _call(fn, item):
    global _IN_CELL
    if _STOP is not None and _STOP.is_set():
        raise Cancelled("stopping")
    _IN_CELL = True
    try:
        return fn(item)
    finally:
        _IN_CELL = False


def _stop_request(signum, frame):
    raise SystemExit(128 + signum)


def map_cells(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 0) -> Iterator[Any]:
    """`fn(item)` for every item, in order: in this process when `workers` resolves to 1, else in that many
    spawned single-threaded XLA:CPU processes (`SINGLE_THREAD_FLAGS` appended to their `XLA_FLAGS`).

    SIGTERM to this process (or Ctrl-C) stops the workers (a training cell writes its checkpoint) and exits with
    status 143 (130); relaunching resumes every cell from its checkpoint.
    """
    items = list(items)
    n = min(resolve_workers(workers), len(items))
    if n <= 1:
        yield from map(fn, items)
        return
    previous = os.environ.get("XLA_FLAGS")
    # Spawned workers inherit the environment at their start; this process's XLA backend is already initialised
    # (resolve_workers asked for it) and does not read the variable again.
    os.environ["XLA_FLAGS"] = f"{previous or ''} {SINGLE_THREAD_FLAGS}".strip()
    context = multiprocessing.get_context("spawn")
    stop, cores = context.Event(), context.Queue()
    for core in sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []:
        cores.put(core)
    executor = concurrent.futures.ProcessPoolExecutor(n, mp_context=context, initializer=_init_worker,
                                                      initargs=(stop, cores))
    main_thread = threading.current_thread() is threading.main_thread()  # handlers only go there
    old_handler = signal.signal(signal.SIGTERM, _stop_request) if main_thread else None
    try:
        futures = [executor.submit(_call, fn, item) for item in items]
        for future in futures:
            yield future.result()
    except GeneratorExit:  # the caller stopped reading (e.g. zip at its last item): a normal end, not a stop
        raise
    except BaseException as err:
        stop.set()
        for process in list(executor._processes.values()):
            if process.is_alive():
                process.terminate()  # SIGTERM
        if isinstance(err, SystemExit):
            print("stopped by SIGTERM: running cells wrote their checkpoints; relaunch the same command to resume",
                  file=sys.stderr, flush=True)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
        executor.shutdown(wait=True, cancel_futures=True)
        if previous is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = previous
