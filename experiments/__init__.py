"""The experiment layer: configs, entry points and their shared skeleton (not part of the installed library)."""

import os

# The experiments hand POT NumPy arrays only. POT's import probes every array backend it finds, and importing
# PyTorch (installed beside us for the FID reference tests) costs ~10 s per process; skip the unused ones.
for _backend in ("PYTORCH", "TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")
