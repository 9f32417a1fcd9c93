import os

# Tests run on the CPU; keep XLA from grabbing every core for intra-op threads on a 2-core CI box.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests hand POT NumPy arrays only; its import would otherwise load PyTorch (~10 s) to probe that backend.
# Subprocesses inherit this.
for _backend in ("PYTORCH", "TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")
