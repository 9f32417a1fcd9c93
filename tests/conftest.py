import os

# Tests run on the CPU; keep XLA from grabbing every core for intra-op threads on a 2-core CI box.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests hand POT NumPy arrays only; its import would otherwise load PyTorch (~10 s) to probe that backend.
# Subprocesses inherit this.
for _backend in ("PYTORCH", "TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

# `make test` runs two xdist workers on a 2-core machine: each runs XLA:CPU on one thread pinned to its own core
# (its subprocesses inherit both), instead of two processes each spreading XLA's threads over both cores
# (`experiments/pool.py` has the measurements). Set before any test initialises JAX's backend.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    from experiments.pool import SINGLE_THREAD_FLAGS

    _cores = sorted(os.sched_getaffinity(0))
    if len(_cores) >= int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.sched_setaffinity(0, {_cores[int(_WORKER[2:]) % len(_cores)]})
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAGS}".strip()
