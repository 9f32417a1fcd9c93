"""Where the U-Net train step's time goes on XLA:CPU: a per-op profile of the compiled step, by op class.

    python -m experiments.profile_unet --config experiments/configs/bench_images.py --workdir results \\
        [--config.steps_per_round=5 --config.mnist.batch=64]

Runs the MNIST train step of `experiments/bench_images.py` (the config's `mnist` model: Cond-OT loss, Adam with
clipping, EMA) under `jax.profiler`, reads the per-thunk events of XLA:CPU's thunk executor from the Perfetto
trace, and joins them to the optimised HLO of the same compiled step:
- op class from the HLO each thunk runs (a fusion is classed by what it fuses): convolution (forward, backward
  to the input, backward to the filter), matmul (batched: attention; plain: linear layers), reduction
  (GroupNorm statistics, loss, norms), layout (transpose / copy), data movement (concatenate, broadcast, pad,
  slice, ...), elementwise;
- phase from the op's metadata: forward (`jvp`), backward (`transpose(jvp)`), update (optimiser, EMA, finite
  checks: everything outside the differentiated function);
- FLOPs of convolutions and matmuls from their HLO shapes, counted dense (every tap, as PyTorch's counter does;
  XLA's cost analysis leaves out taps on the zero padding, ~5 % fewer for 3×3 convolutions at 28×28).
Each thunk's time is its median over the profiled steps (the machine may be shared). The thunk executor runs
independent thunks on several threads at once, so summed thunk time can exceed the step's wall time: shares are
of the summed thunk time, and the wall time per step is printed beside it with the load average.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import tempfile
import time

import jax

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\][^ ]*\s+([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def parse_hlo(text: str) -> dict[str, dict[str, dict]]:
    """{computation: {instruction: {"op", "shape", "operands", "rest"}}} from an HLO module's text."""
    comps: dict[str, dict[str, dict]] = {}
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            current = comps.setdefault(m.group(1), {})
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, _, dims, op, rest = m.groups()
            shape = [int(d) for d in dims.split(",") if d]
            operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            current[name] = {"op": op, "shape": shape, "operands": operands, "rest": rest}
    return comps


def _conv_flops(ins: dict, comp: dict) -> int:
    rest = ins["rest"]
    window = re.search(r"window=\{size=([\dx]+)", rest)
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    kernel = comp.get(ins["operands"][1], {}).get("shape") if len(ins["operands"]) > 1 else None
    if not (window and labels and kernel):
        return 0
    groups = re.search(r"feature_group_count=(\d+)", rest)
    cin = kernel[labels.group(1).index("i")]
    return 2 * _prod(ins["shape"]) * _prod(window.group(1).split("x")) * cin // (int(groups.group(1)) if groups else 1)


def _dot_flops(ins: dict, comp: dict) -> int:
    lhs = comp.get(ins["operands"][0], {}).get("shape")
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins["rest"])
    if lhs is None or dims is None:
        return 0
    return 2 * _prod(ins["shape"]) * _prod(lhs[int(i)] for i in dims.group(1).split(",") if i)


def classify(name: str, comps: dict, comp_of: dict) -> tuple[str, str, int]:
    """(op class, phase, FLOPs) of the top-level instruction `name` (a thunk)."""
    comp = comps[comp_of[name]]
    ins = comp[name]
    ops, flops, cls, names = [], 0, None, []
    todo, seen = [(comp, ins)], set()
    while todo:  # walk into fused / called computations
        c, i = todo.pop()
        ops.append(i["op"])
        names += re.findall(r'op_name="([^"]*)"', i["rest"])
        if i["op"] == "convolution":
            flops += _conv_flops(i, c)
            window = re.search(r"window=\{size=([\dx]+)", i["rest"])
            big = window and _prod(window.group(1).split("x")) > 9
            kind = "bwd-filter" if big else "bwd-input" if any("transpose(" in n for n in names) else "fwd"
            cls = cls or f"conv {kind}"
        elif i["op"] == "dot":
            flops += _dot_flops(i, c)
            cls = cls or ("matmul batched (attention)" if "lhs_batch_dims" in i["rest"] else "matmul (linear)")
        for called in re.findall(r"(?:calls|to_apply|branch_computations|body|condition)=\{?%([\w.\-]+)", i["rest"]):
            if called in comps and called not in seen and not called.startswith(("region", "add", "max", "min")):
                seen.add(called)
                todo.extend((comps[called], j) for j in comps[called].values())
    # Phase from the metadata of the ops it runs (a fusion often has none itself, its fused ops do).
    if any("transpose(" in n for n in names) or (cls or "").startswith("conv bwd"):
        phase = "backward"
    elif any("jvp(" in n for n in names):
        phase = "forward"
    else:
        phase = "update" if names else "unlabelled"
    if cls is None:
        if "reduce" in ops or "reduce-window" in ops:
            cls = "reduction (GroupNorm, loss, norms)"
        elif name.startswith(("transpose", "copy")) or ins["op"] in ("copy", "transpose"):
            cls = "layout (transpose, copy)"
        elif any(o in ops for o in ("concatenate", "broadcast", "pad", "slice", "dynamic-slice", "gather",
                                    "dynamic-update-slice", "scatter")) and not any(
                o in ops for o in ("exponential", "tanh", "divide", "multiply", "add")):
            cls = "data movement (concat, broadcast, pad, slice)"
        else:
            cls = "elementwise (SiLU, scale-shift, Adam, EMA)"
    return cls, phase, flops


def profile_step(js, steps: int = 5, trace_dir: str | None = None) -> dict:
    """Profile `steps` calls of a compiled `bench_images.JaxStep`; returns per-thunk medians and a breakdown."""
    comps = parse_hlo(js.compiled.as_text())
    comp_of = {}
    for cname, instrs in comps.items():
        if not cname.startswith(("fused_", "wrapped_", "region")):
            for iname in instrs:
                comp_of.setdefault(iname, cname)
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="profile_unet_")
    js.steps(2)  # warm
    load = [round(x, 2) for x in os.getloadavg()]
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        js.steps(1)
        walls.append(time.perf_counter() - t0)
    total_wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    per_op = collections.defaultdict(list)
    threads = set()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in comp_of and "hlo_op" in e.get("args", {}):
            per_op[e["name"]].append(e["dur"] / 1e3)
            threads.add(e.get("tid"))
    rows = []
    for name, durs in per_op.items():
        cls, phase, flops = classify(name, comps, comp_of)
        rows.append({"op": name, "class": cls, "phase": phase, "ms": statistics.median(durs), "calls": len(durs),
                     "flops": flops, "shape": comps[comp_of[name]][name]["shape"]})
    summed = sum(r["ms"] for r in rows)
    by_class, by_phase = collections.defaultdict(lambda: [0.0, 0, 0]), collections.defaultdict(float)
    for r in rows:
        k = by_class[r["class"]]
        k[0] += r["ms"]
        k[1] += r["flops"]
        k[2] += 1
        by_phase[r["phase"]] += r["ms"]
    table = [{"class": c, "ms": v[0], "percent": 100 * v[0] / summed, "ops": v[2],
              "gflop": v[1] / 1e9, "gflops": v[1] / v[0] / 1e6 if v[1] and v[0] else None}
             for c, v in sorted(by_class.items(), key=lambda kv: -kv[1][0])]
    return {"wall_ms_per_step": 1e3 * statistics.median(walls), "wall_ms_all": [1e3 * w for w in walls],
            "mean_wall_ms": 1e3 * total_wall / steps, "summed_thunk_ms": summed, "thunks": len(rows),
            "executor_threads": len(threads), "flops_per_step": js.flops, "load_before": load,
            "load_after": [round(x, 2) for x in os.getloadavg()], "by_class": table,
            "by_phase": {p: {"ms": v, "percent": 100 * v / summed} for p, v in sorted(by_phase.items())},
            "top_ops": sorted(rows, key=lambda r: -r["ms"])[:25]}


def format_report(rep: dict) -> str:
    lines = [f"wall {rep['wall_ms_per_step']:.0f} ms/step (median of {len(rep['wall_ms_all'])}), summed thunk time "
             f"{rep['summed_thunk_ms']:.0f} ms over {rep['thunks']} thunks on {rep['executor_threads']} executor "
             f"threads, {rep['flops_per_step'] / 1e9:.1f} GFLOP/step (XLA), load {rep['load_before']}",
             "", "| op class | ms (thunk time) | % | ops | GFLOP | GFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rep["by_class"]:
        rate = f"{r['gflops']:.0f}" if r["gflops"] else "–"
        lines.append(f"| {r['class']} | {r['ms']:.1f} | {r['percent']:.1f} | {r['ops']} | {r['gflop']:.2f} | {rate} |")
    lines += ["", "| phase | ms | % |", "|---|---|---|"]
    lines += [f"| {p} | {v['ms']:.1f} | {v['percent']:.1f} |" for p, v in rep["by_phase"].items()]
    lines += ["", "| top op | class | phase | shape | ms | GFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rep["top_ops"][:15]:
        rate = f"{r['flops'] / r['ms'] / 1e6:.0f}" if r["flops"] else "–"
        lines.append(f"| {r['op']} | {r['class']} | {r['phase']} | {r['shape']} | {r['ms']:.2f} | {rate} |")
    return "\n".join(lines)


def main(config, workdir: str):
    """Profile the MNIST step of the bench_images config `config` (`config.mnist`, `config.steps_per_round`
    profiled steps); print the report and write it to `<workdir>/profile_unet.json`."""
    from experiments import bench_images as B

    js = B.JaxStep(config.mnist, config.mnist.batch, 0)
    rep = profile_step(js, config.steps_per_round)
    rep["compile_seconds"] = js.compile_seconds
    print(f"compile {js.compile_seconds:.1f} s")
    print(format_report(rep))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "profile_unet.json"), "w") as f:
        json.dump(rep, f, indent=2)


if __name__ == "__main__":
    from experiments import common

    common.run(main, "experiments/configs/bench_images.py", "results")
