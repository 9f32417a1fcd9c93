import os

# Tests run on the CPU; keep XLA from grabbing every core for intra-op threads on a 2-core CI box.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
