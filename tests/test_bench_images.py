"""The image benchmark compares like with like: the PyTorch twin computes our U-Net's function, and the XLA
compiler-option variants it times compute the same train step as the default compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fj
from experiments import bench_images as B
from experiments.configs import bench_images as C

torch = pytest.importorskip("torch")


def _small():
    m = C.get_config().mnist
    m.channels, m.channel_mult, m.image_size = 8, (1, 2), 8
    m.attention_resolutions, m.num_groups, m.num_heads = (4,), 4, 2
    return m


def test_torch_twin_computes_our_unet():
    m = _small()
    # RBG keys: eager initialisation compiles one small kernel per parameter shape (~2.5× less CPU than threefry).
    apply, params = fj.models.as_apply(B.build_unet(m, jax.random.key(0, impl="unsafe_rbg")))
    # Perturb every parameter so that the zero-initialised layers are exercised too.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    net = B.make_torch_unet(m).eval()
    B.load_jax_params(net, params)
    assert sum(p.numel() for p in net.parameters()) == sum(p.size for p in jax.tree_util.tree_leaves(params))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    t = np.array([0.1, 0.5, 0.9], np.float32)
    ours = np.asarray(jax.jit(apply)(params, jnp.asarray(x), jnp.asarray(t)))  # one compile, not op by op
    with torch.no_grad():
        theirs = net(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(t)).permute(0, 2, 3, 1).numpy()
    # float32, ~20 layers of O(1) activations: summation-order differences are ~1e-6 relative per layer.
    scale = np.abs(ours).max()
    assert scale > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-4 * scale, rtol=0)


@pytest.mark.slow  # compiles the train step once per variant (~10 s each on a quiet 2-core CPU)
def test_xla_option_variants_compute_the_same_step():
    m = _small()
    plain = B.JaxStep(m, 4, 0)
    for name, options in C.get_config().xla_variants.to_dict().items():
        fast = B.JaxStep(m, 4, 0, options)
        # Both ran one step from the same state and batch (keys included); compare the updated parameters.
        for a, b in zip(jax.tree_util.tree_leaves(plain.state.params), jax.tree_util.tree_leaves(fast.state.params)):
            # One Adam step moves each parameter by ≤ lr = 2e-3; differences in summation order change the
            # update by far less than 1e-5 (a sign flip of a near-zero gradient would move it by 2·lr).
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0, err_msg=name)
