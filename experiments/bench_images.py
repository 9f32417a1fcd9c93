"""U-Net throughput: the compiled image train step and sampler, against the device's peak and PyTorch.

    python -m experiments.bench_images --config experiments/configs/bench_images.py [--config.quick=True]

In one process, for the MNIST U-Net (CPU-sized) and the CIFAR-10 paper U-Net (`UNet.cifar10`; on an
accelerator, or on CPU when `--config.cifar.cpu_batch` > 0):
- compile time of the train step (Cond-OT flow-matching loss, Adam with clipping, EMA: the step
  `experiments/train_images.py` runs), FLOPs per step from XLA's cost analysis, step time, images/s;
- MFU: achieved FLOP/s over the device's peak (`PEAK_TFLOPS` by device kind, or `--config.peak_tflops`); on CPU
  over the f32 2048² matrix-product rate measured in the same run;
- sampling images/s with 100 Euler steps; peak device memory where the backend reports it, and XLA's memory
  analysis of the step;
- the same U-Net in PyTorch (`TorchUNet`: same widths, blocks, attention, GroupNorm, dropout, loss, Adam,
  clipping, EMA; same batch; `torch_threads` threads), with its FLOPs counted by PyTorch's own counter;
- on CPU: XLA compiler-option variants of the MNIST step, the step with the per-leaf optimiser
  (`make_optimizer(flatten=False)`) beside the default flat one, a per-op-class profile of the step
  (`experiments/profile_unet.py`: share of convolutions, normalisation, layout copies, optimiser), and a stack of
  eight 3×3 convolutions (the U-Net's main operation) in both frameworks and under every XLA variant: the best
  rate XLA:CPU reaches on convolutions;
- on a CPU split into one device per core (`fm_jax.distributed.use_host_cores`, what `main` does first, as the
  image trainer does): the MNIST step, the sampler and the convolution stack data-parallel over those devices,
  against one device and PyTorch (`host_data_parallel`). XLA:CPU runs these convolutions on one thread, so the
  split is what uses the other cores.
JAX, PyTorch and the matmul are timed in turn within every round (the machine may be shared); figures are medians
over rounds, and the load average is recorded beside them. JSON goes to `<workdir>/bench_images.json`.
`run(quick=...)` is the entry `experiments.bench` (`make bench`) calls to add these figures to its report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fm_jax as fj
from fm_jax import distributed as fd
from fm_jax import paths as P

# Dense peak TFLOP/s per chip, (bf16, f32), matched by substring of `device.device_kind` (lower case), first hit.
# f32 on NVIDIA is the non-tensor-core rate; TF32 matmuls are faster, so f32 MFU here can exceed what it suggests.
PEAK_TFLOPS = (
    ("h200", (989.0, 67.0)),
    ("h100", (989.0, 67.0)),
    ("a100", (312.0, 19.5)),
    ("l4", (121.0, 30.3)),
    ("tpu v5p", (459.0, 459.0 / 2)),
    ("tpu v5 lite", (197.0, 197.0 / 2)),
    ("tpu v5e", (197.0, 197.0 / 2)),
    ("tpu v4", (275.0, 275.0 / 2)),
)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _memory_analysis(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def device_peak_tflops(dtype: str, override: float = 0.0) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for the default device and the compute dtype."""
    if override > 0:
        return override, "config.peak_tflops"
    kind = jax.devices()[0].device_kind.lower()
    for name, (bf16, f32) in PEAK_TFLOPS:
        if name in kind:
            return (bf16 if dtype == "bfloat16" else f32), f"table: {name} {dtype}"
    return None, f"no peak known for device kind {kind!r}"


def _matmul(n: int = 2048):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()

    def timed() -> float:
        start = time.perf_counter()
        mm(a, b).block_until_ready()
        return 2 * n**3 / (time.perf_counter() - start) / 1e9

    return timed


# --------------------------------------------------------------------------------------------------- JAX side


def build_unet(m, rngs_seed: int | jax.Array = 0) -> fj.models.UNet:
    """The U-Net of the block `m`, its parameters drawn from `nnx.Rngs(rngs_seed)` (a seed or a key)."""
    dtype = None if m.dtype == "float32" else jnp.dtype(m.dtype)
    return fj.models.UNet(
        m.in_channels, image_size=m.image_size, channels=m.channels, channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
        num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups, dtype=dtype, rngs=nnx.Rngs(rngs_seed),
    )


class JaxStep:
    """The image train step of `experiments/train_images.py` (Cond-OT, Adam + clipping, EMA), compiled once.

    devices > 1: data-parallel over the first `devices` devices (`fm_jax.distributed`, as the image trainer
    runs on a CPU split by `use_host_cores`); 1: plain `jax.jit` on the default device."""

    def __init__(self, m, batch: int, seed: int, compiler_options: dict | None = None, model=None,
                 flatten: bool = True, devices: int = 1):
        self.path = P.AffinePath(P.CondOT())
        model = build_unet(m, seed) if model is None else model
        self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
        apply, params = fj.models.as_apply(model)
        opt = fj.make_optimizer(m.learning_rate, clip_norm=m.clip_norm, flatten=flatten)
        loss_fn = functools.partial(fj.flow_matching_loss, apply=apply)

        def step(state, x1, path):
            state, metrics = fj.training.train_step(state, x1, path, loss_fn=loss_fn, optimizer=opt,
                                                    ema_decay=m.ema_decay)
            return state, metrics["loss"]

        self.state = fj.init_train_state(jax.random.key(seed + 1), params, opt)
        self.x1 = jax.random.uniform(jax.random.key(seed + 2), (batch, m.image_size, m.image_size, m.in_channels),
                                     minval=-1.0, maxval=1.0)
        jitted = jax.jit(step, donate_argnums=0)
        if devices > 1:
            mesh = fd.make_mesh(devices=jax.devices()[:devices])
            sharded = fd.make_sharded_train_step(loss_fn, opt, mesh, ema_decay=m.ema_decay)
            jitted = jax.jit(lambda s, x, p: (lambda out: (out[0], out[1]["loss"]))(sharded(s, x, p)),
                             donate_argnums=0)
            self.state, self.x1 = fd.shard_state(self.state, mesh), fd.shard_batch(self.x1, mesh)
            self.path = fd.replicate(self.path, mesh)
        start = time.perf_counter()
        self.compiled = jitted.lower(self.state, self.x1, self.path).compile(compiler_options=compiler_options or None)
        self.compile_seconds = time.perf_counter() - start
        self.flops = _flops(self.compiled)
        self.memory = _memory_analysis(self.compiled)
        self.steps(1)

    def steps(self, n: int) -> float:
        """Run n steps; seconds per step."""
        start = time.perf_counter()
        for _ in range(n):
            self.state, loss = self.compiled(self.state, self.x1, self.path)
        loss.block_until_ready()
        return (time.perf_counter() - start) / n


class JaxSampler:
    """`fm_jax.sample` with the EMA-free evaluation model (no dropout), Euler, `num_steps` steps."""

    def __init__(self, m, batch: int, seed: int, devices: int = 1):
        self.sharding = None
        if devices > 1:  # data-parallel: the source draws split over the devices (`fj.sample(..., sharding=)`)
            mesh = fd.make_mesh(devices=jax.devices()[:devices])
            self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(fd.DATA_AXIS))
        model = build_unet(m, seed)
        model.eval()
        self.apply, self.params = fj.models.as_apply(model)
        self.path = P.AffinePath(P.CondOT())
        self.batch, self.shape, self.num_steps = batch, (m.image_size, m.image_size, m.in_channels), m.sample_steps
        start = time.perf_counter()
        self.run()
        self.first_call_seconds = time.perf_counter() - start

    def run(self) -> float:
        start = time.perf_counter()
        fj.sample(jax.random.key(0), self.path, self.apply, self.params, self.batch, self.shape,
                  num_steps=self.num_steps, sharding=self.sharding).samples.block_until_ready()
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ PyTorch twin


def make_torch_unet(m):
    """The same U-Net as `fm_jax.models.UNet` in PyTorch (NCHW), built from the same hyper-parameters.

    Same layers in the same order with the same parameter names (`load_jax_params` copies ours in, so a test
    can show both compute the same function): time embedding, GroupNorm(ε = 1e-6) → SiLU → 3×3 conv, scale-shift
    time injection, dropout, attention (qkv Linear, scaled dot product, zero-init proj), stride-2 conv with
    XLA's "SAME" padding (pad right/bottom by 1), nearest ×2 upsampling + conv.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def gn(c):
        return nn.GroupNorm(min(m.num_groups, c), c, eps=1e-6)

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, emb):
            super().__init__()
            self.norm1, self.conv1 = gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.emb, self.norm2 = nn.Linear(emb, 2 * cout), gn(cout)
            self.dropout = nn.Dropout(m.dropout) if m.dropout > 0 else None
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

        def forward(self, x, emb):
            h = self.conv1(F.silu(self.norm1(x)))
            scale, shift = self.emb(F.silu(emb)).chunk(2, dim=-1)
            h = F.silu(self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
            if self.dropout is not None:
                h = self.dropout(h)
            h = self.conv2(h)
            return (self.skip(x) if self.skip is not None else x) + h

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm, self.qkv, self.proj = gn(c), nn.Linear(c, 3 * c), nn.Linear(c, c)

        def forward(self, x):
            b, c, h, w = x.shape
            y = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C), the position order of the NHWC model
            qkv = self.qkv(y).reshape(b, h * w, 3, m.num_heads, c // m.num_heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, HW, d)
            out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
            return x + out.transpose(1, 2).reshape(b, c, h, w)

    class Down(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, stride=2)

        def forward(self, x):
            return self.conv(F.pad(x, (0, 1, 0, 1)))

    class Up(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            ch0, mult, levels = m.channels, tuple(m.channel_mult), len(m.channel_mult)
            emb = 4 * ch0
            self.time_features = ch0
            self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.5), math.log(64.0), ch0 // 2)))
            self.time_in, self.time_out = nn.Linear(ch0, emb), nn.Linear(emb, emb)
            self.conv_in = nn.Conv2d(m.in_channels, ch0, 3, padding=1)
            down, skips, ch, res = [], [ch0], ch0, m.image_size
            for level, k in enumerate(mult):
                for _ in range(m.num_res_blocks):
                    down.append(ResBlock(ch, ch0 * k, emb))
                    ch = ch0 * k
                    if res in m.attention_resolutions:
                        down.append(Attention(ch))
                    skips.append(ch)
                if level < levels - 1:
                    down.append(Down(ch))
                    skips.append(ch)
                    res //= 2
            self.down = nn.ModuleList(down)
            self.mid = nn.ModuleList([ResBlock(ch, ch, emb), Attention(ch), ResBlock(ch, ch, emb)])
            up = []
            for level, k in reversed(list(enumerate(mult))):
                for i in range(m.num_res_blocks + 1):
                    up.append(ResBlock(ch + skips.pop(), ch0 * k, emb))
                    ch = ch0 * k
                    if res in m.attention_resolutions:
                        up.append(Attention(ch))
                    if level > 0 and i == m.num_res_blocks:
                        up.append(Up(ch))
                        res *= 2
            self.up = nn.ModuleList(up)
            self.norm_out, self.conv_out = gn(ch), nn.Conv2d(ch, m.in_channels, 3, padding=1)
            for p in (self.conv_out.weight, self.conv_out.bias):  # zero-initialised output, as ours
                nn.init.zeros_(p)

        def forward(self, x, t):
            ang = 2 * math.pi * t[:, None] * self.freqs[None]
            emb = self.time_out(F.silu(self.time_in(torch.cat([torch.sin(ang), torch.cos(ang)], -1))))
            h = self.conv_in(x)
            hs = [h]
            for layer in self.down:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                    hs.append(h)
                elif isinstance(layer, Attention):
                    h = layer(h)
                    hs[-1] = h
                else:
                    h = layer(h)
                    hs.append(h)
            h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
            for layer in self.up:
                h = layer(torch.cat([h, hs.pop()], 1), emb) if isinstance(layer, ResBlock) else layer(h)
            return self.conv_out(F.silu(self.norm_out(h)))

    return UNet()


def load_jax_params(net, params) -> None:
    """Copy an `fm_jax.models.UNet`'s parameters (as from `as_apply`) into `make_torch_unet`'s network."""
    import torch

    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat[".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = np.asarray(leaf)
    with torch.no_grad():
        for name, p in net.named_parameters():
            stem, kind = name.rsplit(".", 1)
            if kind == "bias":
                value = flat[f"{stem}.bias"]
            elif f"{stem}.scale" in flat:  # GroupNorm
                value = flat[f"{stem}.scale"]
            else:
                value = flat[f"{stem}.kernel"]
                # HWIO → OIHW; (in, out) → (out, in)
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {value.shape} from JAX, {tuple(p.shape)} in PyTorch")
            p.copy_(torch.from_numpy(np.array(value, np.float32)))


class TorchStep:
    """The same train step in PyTorch: Cond-OT loss, Adam + global-norm clipping, EMA (in place)."""

    def __init__(self, m, batch: int, seed: int, threads: int):
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.net = make_torch_unet(m)
        self.net.train()
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.opt = torch.optim.Adam(self.net.parameters(), lr=m.learning_rate)
        self.clip_norm, self.ema_decay = m.clip_norm, m.ema_decay
        self.x1 = torch.rand(batch, m.in_channels, m.image_size, m.image_size) * 2 - 1
        counter = FlopCounterMode(display=False)
        with counter:
            self._step()
        self.flops = float(counter.get_total_flops())
        self.steps(1)

    def _step(self):
        torch = self.torch
        b = self.x1.shape[0]
        t = torch.rand(b)
        x0 = torch.randn_like(self.x1)
        tt = t[:, None, None, None]
        xt = tt * self.x1 + (1 - tt) * x0
        loss = ((self.net(xt, t) - (self.x1 - x0)) ** 2).flatten(1).sum(-1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_norm)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.net.parameters()], 1.0 - self.ema_decay)
        return loss

    def steps(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = self._step()
        loss.item()
        return (time.perf_counter() - start) / n


class TorchSampler:
    def __init__(self, m, batch: int, threads: int):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.net = make_torch_unet(m).eval()
        self.batch, self.m = batch, m
        self.run()

    def run(self) -> float:
        torch, m = self.torch, self.m
        start = time.perf_counter()
        with torch.no_grad():
            x = torch.randn(self.batch, m.in_channels, m.image_size, m.image_size)
            dt = 1.0 / m.sample_steps
            for i in range(m.sample_steps):
                x = x + dt * self.net(x, torch.full((self.batch,), i * dt))
        float(x[0, 0, 0, 0])
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ the sections


def _torch_available(config) -> bool:
    if not config.torch:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def host_dp_devices(batch: int) -> int:
    """The data-parallel device count for `batch` on a CPU split by `use_host_cores` (1: not split, or elsewhere)."""
    cpus = jax.devices()
    if cpus[0].platform != "cpu":
        return 1
    return max(d for d in range(1, len(cpus) + 1) if batch % d == 0)


def bench_model(m, batch: int, config, *, with_torch: bool, matmul=None, variants: dict | None = None) -> dict:
    """Train step (JAX, PyTorch, XLA variants) and sampling of one U-Net, interleaved rounds; medians."""
    rounds = 2 if config.quick else config.rounds
    n = 1 if config.quick else config.steps_per_round
    out = {"batch": batch, "dtype": m.dtype, "load_before": _load()}
    jx = JaxStep(m, batch, config.seed)
    out.update(num_params=jx.num_params, compile_seconds=jx.compile_seconds, flops_per_step=jx.flops,
               xla_memory_analysis=jx.memory)
    th = TorchStep(m, batch, config.seed, config.torch_threads) if with_torch else None
    vs = {}
    for name, options in (variants or {}).items():
        try:
            vs[name] = JaxStep(m, batch, config.seed, dict(options))
        except Exception as err:  # an option this jaxlib does not take
            out.setdefault("xla_variants_failed", {})[name] = str(err).splitlines()[0][:200]
    per_leaf = JaxStep(m, batch, config.seed, flatten=False) \
        if variants is not None and config.get("compare_per_leaf_update") else None
    dp_devices = host_dp_devices(batch)
    dp = JaxStep(m, batch, config.seed, devices=dp_devices) if dp_devices > 1 else None
    times = {"jax": [], "torch": [], "matmul_gflops": [], "per_leaf": [], "host_dp": [], **{k: [] for k in vs}}
    loads = []
    for _ in range(rounds):
        times["jax"].append(jx.steps(n))
        if th is not None:
            times["torch"].append(th.steps(n))
        for k, v in vs.items():
            times[k].append(v.steps(n))
        if per_leaf is not None:
            times["per_leaf"].append(per_leaf.steps(n))
        if dp is not None:
            times["host_dp"].append(dp.steps(n))
        if matmul is not None:
            times["matmul_gflops"].append(matmul())
        loads.append(_load()[0])
    med = {k: statistics.median(v) for k, v in times.items() if v}
    sec = med["jax"]
    out.update(step_seconds=sec, step_seconds_all=times["jax"], images_per_second=batch / sec,
               achieved_gflops=jx.flops / sec / 1e9 if jx.flops else None, load_1min_during=loads)
    if "matmul_gflops" in med:
        out["matmul_gflops_same_rounds"] = med["matmul_gflops"]
        out["fraction_of_matmul"] = out["achieved_gflops"] / med["matmul_gflops"] if jx.flops else None
    if th is not None:
        out["pytorch"] = {"step_seconds": med["torch"], "step_seconds_all": times["torch"],
                          "images_per_second": batch / med["torch"], "flops_per_step_torch_counter": th.flops,
                          "achieved_gflops_xla_flops": jx.flops / med["torch"] / 1e9 if jx.flops else None,
                          "threads": config.torch_threads}
        out["speed_vs_pytorch"] = med["torch"] / sec
    if dp is not None:
        d = {"devices": dp_devices, "compile_seconds": dp.compile_seconds, "step_seconds": med["host_dp"],
             "step_seconds_all": times["host_dp"], "images_per_second": batch / med["host_dp"],
             "speedup_vs_one_device": sec / med["host_dp"],
             # Both ran the same steps from the same state and batch: the split changes round-off only.
             "params_max_abs_diff_vs_one_device": max(
                 float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                 zip(jax.tree_util.tree_leaves(jx.state.params), jax.tree_util.tree_leaves(dp.state.params)))}
        if jx.flops:
            d["achieved_gflops"] = jx.flops / med["host_dp"] / 1e9  # the single-device program's FLOPs
            if "matmul_gflops" in med:
                d["fraction_of_matmul"] = d["achieved_gflops"] / med["matmul_gflops"]
        if th is not None:
            d["speed_vs_pytorch"] = med["torch"] / med["host_dp"]
        out["host_data_parallel"] = d
    if per_leaf is not None:
        out["per_leaf_update"] = {"compile_seconds": per_leaf.compile_seconds, "step_seconds": med["per_leaf"],
                                  "flat_update_speedup": med["per_leaf"] / sec,
                                  "flat_update_compile_ratio": jx.compile_seconds / per_leaf.compile_seconds}
    if vs:
        out["xla_variants"] = {
            k: {"options": dict(dict(variants)[k]), "compile_seconds": v.compile_seconds, "step_seconds": med[k],
                "speed_vs_default": sec / med[k]} for k, v in vs.items()}
    if config.get("profile") and jax.devices()[0].platform == "cpu":
        from experiments import profile_unet

        prof = profile_unet.profile_step(jx, 2 if config.quick else 5)
        out["profile"] = {k: prof[k] for k in ("wall_ms_per_step", "summed_thunk_ms", "thunks", "by_class",
                                               "by_phase", "load_before")}
        out["profile"]["top_ops"] = prof["top_ops"][:10]
        conv = sum(r["ms"] for r in prof["by_class"] if r["class"].startswith("conv"))
        out["profile"]["conv_fraction"] = conv / prof["summed_thunk_ms"]
    # Sampling: images/s at `sample_steps` Euler steps.
    js = JaxSampler(m, m.sample_batch, config.seed)
    sample_dp = host_dp_devices(m.sample_batch)
    jds = JaxSampler(m, m.sample_batch, config.seed, devices=sample_dp) if sample_dp > 1 else None
    ts = TorchSampler(m, m.sample_batch, config.torch_threads) if with_torch else None
    sj, st, sd = [], [], []
    for _ in range(1 if config.quick else 3):
        sj.append(js.run())
        if jds is not None:
            sd.append(jds.run())
        if ts is not None:
            st.append(ts.run())
    out["sampling"] = {"batch": m.sample_batch, "euler_steps": m.sample_steps, "seconds": statistics.median(sj),
                       "images_per_second": m.sample_batch / statistics.median(sj),
                       "first_call_seconds": js.first_call_seconds}
    if ts is not None:
        out["sampling"]["pytorch_images_per_second"] = m.sample_batch / statistics.median(st)
        out["sampling"]["speed_vs_pytorch"] = statistics.median(st) / statistics.median(sj)
    if jds is not None:
        out["sampling"]["host_data_parallel"] = {
            "devices": sample_dp, "images_per_second": m.sample_batch / statistics.median(sd),
            "speedup_vs_one_device": statistics.median(sj) / statistics.median(sd)}
        if ts is not None:
            out["sampling"]["host_data_parallel"]["speed_vs_pytorch"] = statistics.median(st) / statistics.median(sd)
    out["peak_device_memory_bytes"] = _peak_memory()
    return out


def conv_stack(config, matmul) -> dict:
    """Eight 3×3 convolutions + SiLU (batch 64, 28×28, 32 channels), forward + backward, JAX vs PyTorch.

    Also compiled under each XLA option variant of the config (`xla_variants`), timed in the same rounds:
    `best_xla_gflops` is the best rate any of these XLA:CPU configurations reaches on the U-Net's main operation.
    """
    b, hw, c, layers = 64, 28, 32, 8

    def f(ws, x):
        for w in ws:
            x = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO",
                                                                                                     "NHWC")))
        return jnp.sum(x**2)

    ws = [0.1 * jax.random.normal(jax.random.key(i), (3, 3, c, c)) for i in range(layers)]
    x = jax.random.normal(jax.random.key(99), (b, hw, hw, c))
    lowered = jax.jit(jax.grad(f)).lower(ws, x)
    compiled = lowered.compile()
    flops = _flops(compiled)
    jax.block_until_ready(compiled(ws, x))
    variants = {}
    if config.try_xla_variants:
        for name, options in config.xla_variants.to_dict().items():
            try:
                variants[name] = lowered.compile(compiler_options=dict(options))
                jax.block_until_ready(variants[name](ws, x))
            except Exception:  # an option this jaxlib does not take
                continue

    def run_jax(c=compiled, ws=ws, x=x):
        start = time.perf_counter()
        jax.block_until_ready(c(ws, x))
        return time.perf_counter() - start

    # Data-parallel over the CPU's devices (`use_host_cores`): the batch split, the filter gradients all-reduced.
    dp_devices = host_dp_devices(b)
    if dp_devices > 1:
        mesh = fd.make_mesh(devices=jax.devices()[:dp_devices])
        dp_ws, dp_x = fd.replicate(ws, mesh), fd.shard_batch(x, mesh)
        dp_compiled = jax.jit(jax.grad(f)).lower(dp_ws, dp_x).compile()
        jax.block_until_ready(dp_compiled(dp_ws, dp_x))

    run_torch = None
    if _torch_available(config):
        import torch

        torch.set_num_threads(config.torch_threads)
        tw = [torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous().requires_grad_() for w in ws]
        tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()

        def run_torch():
            start = time.perf_counter()
            h = tx
            for w in tw:
                h = torch.nn.functional.silu(torch.nn.functional.conv2d(h, w, padding=1))
            torch.autograd.grad((h**2).sum(), tw)
            return time.perf_counter() - start

        run_torch()
    tj, tt, mm, td, tv = [], [], [], [], {k: [] for k in variants}
    for _ in range(3 if config.quick else 7):
        tj.append(run_jax())
        if dp_devices > 1:
            td.append(run_jax(dp_compiled, dp_ws, dp_x))
        for k, variant in variants.items():
            tv[k].append(run_jax(variant))
        if run_torch:
            tt.append(run_torch())
        mm.append(matmul())
    out = {"shape": [b, hw, hw, c], "layers": layers, "flops": flops, "jax_seconds": statistics.median(tj),
           "jax_gflops": flops / statistics.median(tj) / 1e9, "matmul_gflops_same_rounds": statistics.median(mm),
           "load_1min": _load()[0]}
    out["xla_variants_gflops"] = {k: flops / statistics.median(v) / 1e9 for k, v in tv.items()}
    out["best_xla_gflops"] = max([out["jax_gflops"], *out["xla_variants_gflops"].values()])
    if tt:
        out.update(pytorch_seconds=statistics.median(tt), pytorch_gflops=flops / statistics.median(tt) / 1e9,
                   speed_vs_pytorch=statistics.median(tt) / statistics.median(tj))
        out["best_xla_vs_pytorch"] = out["best_xla_gflops"] / out["pytorch_gflops"]
    if td:
        out["host_data_parallel"] = {"devices": dp_devices, "gflops": flops / statistics.median(td) / 1e9,
                                     "speedup_vs_one_device": statistics.median(tj) / statistics.median(td)}
        if tt:
            out["host_data_parallel"]["speed_vs_pytorch"] = statistics.median(tt) / statistics.median(td)
    return out


def run(config=None, *, quick: bool | None = None) -> dict:
    """All sections for `config` (default: experiments/configs/bench_images.py); returns the report dict."""
    if config is None:
        from experiments.configs import bench_images

        config = bench_images.get_config()
    if quick is not None:
        config.quick = quick
    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    with_torch = _torch_available(config) and on_cpu  # the PyTorch twin is a CPU wheel here
    report = {"device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count(),
                         "jax": jax.__version__, "cpus": os.cpu_count()}, "load_start": _load()}
    if with_torch:
        import torch

        report["device"]["torch"] = torch.__version__
    matmul = _matmul(1024 if config.quick else 2048)
    report["matmul_f32_gflops"] = statistics.median([matmul() for _ in range(5)])
    if on_cpu and config.conv_stack:
        report["conv_stack"] = conv_stack(config, matmul)
    models = []
    if config.mnist.enabled:
        models.append(("mnist", config.mnist, config.mnist.batch))
    cifar_batch = config.cifar.batch if not on_cpu else config.cifar.cpu_batch
    if config.cifar.enabled and cifar_batch > 0:
        cifar = config.cifar
        if on_cpu:
            cifar = cifar.copy_and_resolve_references()
            cifar.dtype = "float32"
            cifar.sample_batch = min(cifar.sample_batch, cifar_batch)
        models.append(("cifar10", cifar, cifar_batch))
    for name, m, batch in models:
        variants = config.xla_variants.to_dict() if (on_cpu and config.try_xla_variants and name == "mnist") else None
        r = bench_model(m, batch, config, with_torch=with_torch, matmul=matmul if on_cpu else None,
                        variants=variants)
        peak, source = device_peak_tflops(m.dtype, config.peak_tflops)
        if on_cpu and config.peak_tflops <= 0:
            peak, source = r["matmul_gflops_same_rounds"] / 1e3, "f32 2048² matmul measured in the same rounds"
        if peak and r["achieved_gflops"]:
            r["mfu"] = r["achieved_gflops"] / 1e3 / peak
        r["peak_tflops"], r["peak_source"] = peak, source
        report[name] = r
    report["load_end"] = _load()
    return report


def summary(report: dict) -> str:
    """A few Markdown table rows of the headline figures."""
    rows = ["| model | batch | compile s | step ms | images/s | GFLOP/step | GFLOP/s | MFU | vs PyTorch | load |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("mnist", "cifar10"):
        r = report.get(name)
        if not r:
            continue
        vs = f"{r['speed_vs_pytorch']:.2f}×" if "speed_vs_pytorch" in r else "–"
        rows.append(f"| {name} | {r['batch']} | {r['compile_seconds']:.1f} | {1e3 * r['step_seconds']:.0f} | "
                    f"{r['images_per_second']:.0f} | {(r['flops_per_step'] or 0) / 1e9:.1f} | "
                    f"{r['achieved_gflops'] or 0:.0f} | {100 * r.get('mfu', 0):.0f} % | {vs} | "
                    f"{statistics.median(r['load_1min_during']):.1f} |")
        d = r.get("host_data_parallel")
        if d:
            vs = f"{d['speed_vs_pytorch']:.2f}×" if "speed_vs_pytorch" in d else "–"
            mfu = f"{100 * d['fraction_of_matmul']:.0f} %" if "fraction_of_matmul" in d else "–"
            rows.append(f"| {name}, {d['devices']} CPU devices | {r['batch']} | {d['compile_seconds']:.1f} | "
                        f"{1e3 * d['step_seconds']:.0f} | {d['images_per_second']:.0f} | "
                        f"{(r['flops_per_step'] or 0) / 1e9:.1f} | {d.get('achieved_gflops') or 0:.0f} | {mfu} | "
                        f"{vs} | {statistics.median(r['load_1min_during']):.1f} |")
    return "\n".join(rows)


def main(config, workdir: str):
    fd.use_host_cores(config.host_devices or None)  # before any JAX op: one CPU device per core (0) or n
    report = run(config)
    out = os.path.join(workdir, "bench_images.json")
    os.makedirs(workdir, exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    print(summary(report))
    print(f"written to {out}")


if __name__ == "__main__":
    from experiments import common

    common.run(main, "experiments/configs/bench_images.py", "results")
