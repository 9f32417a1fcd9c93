"""Settings of `experiments/hsm_small_sigma.py`: why HSM with a learned velocity predictor fails at small sigma.

    python -m experiments.hsm_small_sigma --config experiments/configs/hsm_small_sigma.py
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.sigmas = "0.01,0.03,0.1,0.3,1.0"  # noise level = HSM horizon T (positions spread ~ T sigma_v)
    c.snr_samples = 4096  # per-example gradients for SNR / cosine, and points for the predictor error
    c.hsm_steps = 4  # velocity-Verlet steps of the PH-ODE
    c.hidden = 64  # force and predictor networks (as experiments/hsm_gmm.py)
    c.depth = 2
    c.batch = 512
    c.lr = 2e-3
    # Predictor variants "name:parameterisation:steps:lr_schedule:hidden:batch"; parameterisation `plain` is
    # V(x, s) = net(x, s) (experiments/hsm_gmm.py), `scaled` is V = tau * net(x, s) (fm_jax.hsm.TimeScaledPredictor).
    c.variants = ",".join([
        "as_hsm_gmm:plain:500:constant:64:512",
        "longer:plain:4000:cosine:64:512",
        "scaled:scaled:500:constant:64:512",
        "scaled_longer:scaled:4000:cosine:64:512",
    ])
    # Capacity and data (slower; run at the two smallest sigmas):
    #   --config.sigmas=0.01,0.03
    #   --config.variants=wider:plain:4000:cosine:256:512,scaled_more_data:scaled:4000:cosine:64:4096
    c.seed = 0
    # Steps between checkpoints (a multiple of 50) of each predictor fit, under `<workdir>/runs/`: a relaunch resumes.
    c.checkpoint_every = 500
    return c
