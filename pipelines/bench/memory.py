"""``medsr bench memory``: activation memory, peak memory, step time and GFLOP/s vs reversible depth.

For each depth R and each variant of the same generator, one training step (forward, MSE loss,
backward) on one patch is measured:

* ``reversible``: the core's memory-saving autograd Function (``memory_efficient=True``);
* ``plain``: the same blocks through plain autograd (``memory_efficient=False``);
* ``memcnn``: the same blocks, each wrapped in memcnn's ``InvertibleModuleWrapper`` (only when
  ``import memcnn`` works; skipped otherwise).

Measures, per configuration (each run in a fresh subprocess on CPU, so peak RSS is its own):

* ``saved_MiB``: bytes the forward pass saves for backward, through
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters excluded): deterministic.
  (memcnn keeps its per-block outputs on ``ctx`` where the hooks cannot see them.)
* ``peak_MiB`` / ``step_MiB``: CUDA ``max_memory_allocated`` (GPU), else peak RSS of the
  subprocess (``VmHWM``: ``ru_maxrss`` would include the parent's peak, inherited at fork/exec),
  run with ``MALLOC_MMAP_THRESHOLD_=65536`` so RSS tracks live tensors rather than glibc's
  retained heap; and its rise over the RSS just before the step.
* ``step_s`` / ``cpu_s``: median wall / process-CPU time of ``--repeats`` steps after one warm-up
  step, the variants of one depth interleaved round-robin in one process.
* ``GFLOP/s``: convolution FLOPs of the step (2 k^d Cin Cout per output voxel per conv, x3 for
  forward + backward, plus the recomputed core forwards: 1 for ``reversible``, 2 for ``memcnn``)
  over the median step time (wall, and CPU), next to a conv probe (3^d conv, K->K and K/2->K/2) timed in the same run.

Extending to 2D (the 2D module): add a ``GeneratorCase`` to :data:`CASES` under ``"2d"``, built by
:func:`make_case` from ``spatial_dims=2`` and a generator factory; ``--2d`` then selects it.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from medsr.utils.device import resolve_device
from medsr.utils.threads import bench_threads, parse_threads
from medsr.networks import create_model
from medsr.utils.atomic import atomic_path

VARIANTS: tuple[str, ...] = ("reversible", "plain", "memcnn")
# Recomputed core forward passes per training step (the price of not storing activations).
RECOMPUTE: dict[str, int] = {"reversible": 1, "plain": 0, "memcnn": 2}
MIB = 2.0**20


# --------------------------------------------------------------------------------------------
# Cases: which generator to build, per dimensionality
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorCase:
    """How to build the benchmarked generator and its input.

    Attributes:
        spatial_dims: 2 or 3.
        build: ``(depth, variant, width, channels) -> nn.Module`` with ``.core`` (a reversible
            sequence; its convs are the ones recomputed) and ``forward``.
        input_shape: ``(channels, patch) -> (1, channels, *[patch] * spatial_dims)``.
    """
    spatial_dims: int
    build: Callable[[int, str, int, int], nn.Module]
    input_shape: Callable[[int, int], tuple[int, ...]]


def memcnn_available() -> bool:
    try:
        import memcnn  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


class MemcnnCore(nn.Module):
    """The blocks of a :class:`~medsr.networks.reversible.ReversibleSequence`, each wrapped by memcnn.

    Reuses the same branch modules (same weights); memcnn frees each block's input after use and
    rebuilds it by inversion in backward (one inverse and one forward recomputation per block).
    """
    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        import memcnn

        wrapped = []
        for i, block in enumerate(core.blocks):
            coupling = memcnn.AdditiveCoupling(Fm=block.f, Gm=block.g)
            # keep_input on the first block: its input is the encoder's ReLU output, which that
            # ReLU saved for its own backward; memcnn would free it (its known ReLU failure).
            wrapped.append(memcnn.InvertibleModuleWrapper(coupling, keep_input=(i == 0), keep_input_inverse=(i == 0)))
        self.blocks = nn.ModuleList(wrapped)

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for b in reversed(self.blocks):
            y = b.inverse(y)
        return y


def make_case(spatial_dims: int, factory: Callable[..., nn.Module]) -> GeneratorCase:
    """A :class:`GeneratorCase` from a generator factory ``factory(in_channels, width, depth, memory_efficient)``.

    The factory's model must expose its reversible core as ``.core`` (with ``.blocks`` of
    coupling blocks having ``.f`` and ``.g``) so the memcnn variant can rewrap the same blocks.
    """
    def build(depth: int, variant: str, width: int, channels: int) -> nn.Module:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        model = factory(in_channels=channels, width=width, depth=depth, memory_efficient=(variant == "reversible"))
        if variant == "memcnn" and depth > 0:
            model.core = MemcnnCore(model.core)
        return model

    def input_shape(channels: int, patch: int) -> tuple[int, ...]:
        return (1, channels) + (patch,) * spatial_dims

    return GeneratorCase(spatial_dims, build, input_shape)


def _srcnn3d_factory(*, in_channels: int, width: int, depth: int, memory_efficient: bool) -> nn.Module:
    name = "srcnn3d" if depth == 0 else "rev_srcnn3d"
    return create_model(name, in_channels=in_channels, width=width, depth=depth, memory_efficient=memory_efficient)


CASES: dict[str, GeneratorCase] = {"3d": make_case(3, _srcnn3d_factory)}


# --------------------------------------------------------------------------------------------
# Measurements (importable; the tests run them on tiny shapes)
# --------------------------------------------------------------------------------------------
def _layout(x: torch.Tensor, model: nn.Module, channels_last: bool) -> tuple[torch.Tensor, nn.Module]:
    if not channels_last:
        return x, model
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=fmt), model.to(memory_format=fmt)


def training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """One step: zero grads, forward, MSE loss, backward. Returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(x), target)
    loss.backward()
    return float(loss.detach())


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> int:
    """Bytes of the unique non-parameter storages the forward pass saves for backward.

    Runs a full training step; only the forward is inside ``saved_tensors_hooks`` (what stays
    alive until backward), so transient recomputation graphs in backward are not counted.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.mse_loss(model(x), target)
    loss.backward()
    return int(sum(storages.values()))


def conv_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Forward FLOPs of every conv (2 k^d Cin/groups Cout per output voxel): (total, core only).

    Counted with forward hooks on a meta-device copy (shapes only, no arithmetic).
    """
    meta = copy.deepcopy(model).to("meta")
    counts = {"total": 0.0, "core": 0.0}
    handles = []
    for name, m in meta.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            in_core = name.startswith("core.")

            def hook(mod, _inp, out, in_core=in_core):
                per_voxel = 2.0 * math.prod(mod.kernel_size) * (mod.in_channels // mod.groups) * mod.out_channels
                fl = per_voxel * out.numel() / out.shape[1]
                counts["total"] += fl
                if in_core:
                    counts["core"] += fl

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        # The plain path of the core (the Function is skipped under no_grad) runs every conv once.
        meta(torch.empty(x.shape, device="meta", dtype=x.dtype))
    for h in handles:
        h.remove()
    return counts["total"], counts["core"]


def step_flops(model: nn.Module, x: torch.Tensor, variant: str) -> float:
    """Conv FLOPs of one training step: 3 x forward + the recomputed core forwards."""
    total, core = conv_flops(model, x)
    return 3.0 * total + RECOMPUTE[variant] * core


def conv_probe_gflops(
    channels: int, patch: int, spatial_dims: int = 3, repeats: int = 5,
    channels_last: bool = False, device: str = "cpu", padding_mode: str = "reflect", clock: str = "wall",
) -> float:
    """GFLOP/s of one 3^d conv ``channels -> channels`` (forward) on a ``patch``-sided input.

    ``clock="wall"`` (perf_counter) or ``"cpu"`` (process CPU time, robust to a shared machine).

    Reflect padding by default, as in the generators: it matters on CPU, where PyTorch picks the
    oneDNN kernel for a batch-1 3D conv only when N*C*D*H of the (padded) input exceeds 20480, so a
    32-channel conv on a zero-padded 24^3 input falls back to a ~4-10x slower kernel while the same
    conv on the reflect-padded 26^3 input does not.
    """
    conv = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(channels, channels, 3, padding=1, padding_mode=padding_mode).to(device)
    x = torch.randn((1, channels) + (patch,) * spatial_dims, device=device)
    x, conv = _layout(x, conv, channels_last)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(device)
            t0 = now()
            conv(x)
            _sync(device)
            if i:  # the first call pays for kernel selection
                times.append(now() - t0)
    flops = 2.0 * 3**spatial_dims * channels * channels * patch**spatial_dims
    return flops / statistics.median(times) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _vm_rss_bytes() -> int:
    return _proc_status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    """Peak RSS of this process's own address space (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark into a child at fork/exec, so a
    child spawned by a big parent would report the parent's peak.
    """
    hwm = _proc_status_bytes("VmHWM")
    return hwm if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(cfg: dict[str, Any]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(int(cfg.get("seed", 0)))
    case = CASES[cfg["case"]]
    model = case.build(cfg["depth"], cfg["variant"], cfg["width"], cfg["channels"]).to(cfg["device"])
    x = torch.randn(case.input_shape(cfg["channels"], cfg["patch"]), device=cfg["device"])
    target = torch.randn_like(x)
    x, model = _layout(x, model, bool(cfg.get("channels_last")))
    return model, x, target


def measure_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    """Memory of one training step of one (case, variant, depth): saved bytes and peak.

    ``cfg`` keys: case, variant, depth, width, channels, patch, device, channels_last,
    threads (0 = torch default), seed. Returns the measured row (a plain dict). On CPU run it in
    a fresh process (:func:`measure_in_subprocess`) so the peak RSS is this configuration's own.
    """
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = cfg["device"]
    model, x, target = _build(cfg)
    flops = step_flops(model, x, cfg["variant"])
    n_params = sum(p.numel() for p in model.parameters())
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _vm_rss_bytes()
    saved = saved_tensor_bytes(model, x, target)  # one full training step
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss_bytes()
    return {
        "case": cfg["case"], "variant": cfg["variant"], "depth": cfg["depth"], "width": cfg["width"],
        "channels": cfg["channels"], "patch": cfg["patch"], "device": device,
        "channels_last": bool(cfg.get("channels_last")), "params_M": n_params / 1e6,
        "saved_MiB": saved / MIB, "peak_MiB": peak / MIB, "step_MiB": max(peak - base, 0) / MIB,
        "GFLOP_step": flops / 1e9,
    }


def measure_times(cfgs: list[dict[str, Any]], repeats: int) -> tuple[list[list[float]], list[list[float]]]:
    """Wall and CPU step times of several configurations, interleaved round-robin in this process.

    Interleaving makes the ratios between variants robust to load that drifts during the run
    (the machine is shared). One untimed warm-up step each, then ``repeats`` timed rounds.
    CPU time (``time.process_time``) is reported too: on an oversubscribed shared machine the
    wall time mostly measures the scheduler, while single-threaded CPU time measures the work.

    Returns:
        (wall seconds, CPU seconds), each one list of ``repeats`` values per configuration.
    """
    built = [_build(c) for c in cfgs]
    device = cfgs[0]["device"]
    for model, x, target in built:
        training_step(model, x, target)
    wall: list[list[float]] = [[] for _ in cfgs]
    cpu: list[list[float]] = [[] for _ in cfgs]
    for _ in range(repeats):
        for i, (model, x, target) in enumerate(built):
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            training_step(model, x, target)
            _sync(device)
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return wall, cpu


_CHILD_CODE = "import json,sys; from pipelines.bench.memory import measure_memory; print(json.dumps(measure_memory(json.loads(sys.argv[1]))))"


def measure_in_subprocess(cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """:func:`measure_memory` in a fresh Python process, so its peak RSS belongs to this config alone."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # A fixed mmap threshold turns off glibc's dynamic one, under which freed tensors of a few MiB
    # stay in the heap, so RSS overstates live memory (measured, reversible R=16, K=64, 24^3:
    # 73 MiB above the pre-step RSS without it, 59 MiB with it).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE, json.dumps(cfg)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench config {cfg['variant']} R={cfg['depth']} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(
    *,
    case: str = "3d",
    depths: list[int],
    width: int,
    channels: int,
    patch: int,
    repeats: int,
    device: str = "cpu",
    variants: list[str] | None = None,
    channels_last: bool = False,
    threads: int = 0,
    subprocess_per_config: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Measure every (variant, depth); returns (rows, conv probe GFLOP/s by name).

    Per depth: memory of each variant (a fresh subprocess each on CPU), then the variants' step
    times interleaved in this process.
    """
    if variants is None:
        variants = [v for v in VARIANTS if v != "memcnn" or memcnn_available()]
    if subprocess_per_config is None:
        subprocess_per_config = not device.startswith("cuda")
    if threads:
        torch.set_num_threads(threads)
    spatial_dims = CASES[case].spatial_dims
    half = max(width // 2, 1)
    probes = {
        f"conv{c}_{clock}": conv_probe_gflops(c, patch, spatial_dims, repeats, channels_last, device, clock=clock)
        for c in (width, half) for clock in ("wall", "cpu")
    }
    rows = []
    bar = tqdm(total=2 * len(depths) * len(variants), desc="bench memory", unit="run", disable=not progress)
    for depth in depths:
        cfgs = [dict(case=case, variant=v, depth=depth, width=width, channels=channels, patch=patch,
                     device=device, channels_last=channels_last, threads=threads, seed=0) for v in variants]
        depth_rows = []
        for cfg in cfgs:
            depth_rows.append(measure_in_subprocess(cfg) if subprocess_per_config else measure_memory(cfg))
            bar.update(1)
        for row, ts, cs in zip(depth_rows, *measure_times(cfgs, repeats)):
            row["step_s"] = statistics.median(ts)
            row["cpu_s"] = statistics.median(cs)
            row["step_s_all"] = ";".join(f"{t:.4f}" for t in ts)
            row["cpu_s_all"] = ";".join(f"{t:.4f}" for t in cs)
            row["GFLOP_s"] = row["GFLOP_step"] / row["step_s"]
            row["GFLOP_s_cpu"] = row["GFLOP_step"] / row["cpu_s"] if row["cpu_s"] > 0 else float("nan")
            bar.update(1)
        rows += depth_rows
    bar.close()
    plain = {r["depth"]: r for r in rows if r["variant"] == "plain"}
    for r in rows:
        p = plain.get(r["depth"])
        r["time_vs_plain"] = r["step_s"] / p["step_s"] if p else float("nan")
        r["cpu_vs_plain"] = r["cpu_s"] / p["cpu_s"] if p and p["cpu_s"] > 0 else float("nan")
        r["probe_GFLOP_s"] = probes[f"conv{width}_wall"]
        r["probe_GFLOP_s_cpu"] = probes[f"conv{width}_cpu"]
        r["probe_half_GFLOP_s"] = probes[f"conv{half}_wall"]
        r["probe_half_GFLOP_s_cpu"] = probes[f"conv{half}_cpu"]
    return rows, probes


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, as PASS/FAIL lines (only those the measured depths allow)."""
    by = {(r["variant"], r["depth"]): r for r in rows}
    out = []
    if ("reversible", 2) in by and ("reversible", 32) in by:
        a, b = by[("reversible", 2)]["saved_MiB"], by[("reversible", 32)]["saved_MiB"]
        rel = abs(b - a) / a
        out.append(f"{'PASS' if rel <= 0.02 else 'FAIL'} reversible saved memory R=32 vs R=2: {b:.2f} vs {a:.2f} MiB ({100 * rel:.1f}%, target <= 2%)")
    plain = sorted((r["depth"], r["saved_MiB"]) for r in rows if r["variant"] == "plain")
    if len(plain) >= 3:
        xs, ys = [d for d, _ in plain], [s for _, s in plain]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sxx = sum((x - mx) ** 2 for x in xs)
        syy = sum((y - my) ** 2 for y in ys)
        r2 = sxy * sxy / (sxx * syy) if sxx and syy else float("nan")
        out.append(f"{'PASS' if r2 > 0.99 else 'FAIL'} plain saved memory linear in depth: {sxy / sxx:.2f} MiB per block, R^2={r2:.4f}")
    for key, what in (("step_s", "wall"), ("cpu_s", "CPU")):
        if ("reversible", 8) in by and ("plain", 8) in by and key in by[("plain", 8)]:
            ratio = by[("reversible", 8)][key] / by[("plain", 8)][key]
            out.append(f"{'PASS' if ratio <= 1.35 else 'FAIL'} {what} step time reversible/plain at R=8: {ratio:.2f} (target <= 1.35)")
        for d in sorted({r["depth"] for r in rows if r["depth"] > 0}):
            if ("memcnn", d) in by and ("reversible", d) in by and key in by[("memcnn", d)]:
                a, b = by[("reversible", d)][key], by[("memcnn", d)][key]
                out.append(f"{'PASS' if a <= b else 'FAIL'} R={d}: {what} reversible {a:.3f}s vs memcnn {b:.3f}s (reversible no slower)")
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [("variant", "{}"), ("depth", "{}"), ("params_M", "{:.3f}"), ("saved_MiB", "{:.2f}"),
            ("peak_MiB", "{:.1f}"), ("step_MiB", "{:.1f}"), ("step_s", "{:.3f}"), ("cpu_s", "{:.3f}"),
            ("time_vs_plain", "{:.2f}"), ("cpu_vs_plain", "{:.2f}"), ("GFLOP_step", "{:.1f}"), ("GFLOP_s", "{:.1f}"),
            ("GFLOP_s_cpu", "{:.1f}")]
    cells = [[c for c, _ in cols]] + [[fmt.format(r[c]) for c, fmt in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def plot_vs_depth(
    rows: list[dict[str, Any]], path: Path, title: str, *, series: str, panels: list[tuple[str, str]], xlabel: str
) -> None:
    """One panel per ``(column, label)`` in ``panels`` (two per row): that column vs depth, one line per
    ``series`` value; the depth axis is ticked at the measured (integer) depths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False, layout="constrained")
    depths = sorted({int(r["depth"]) for r in rows})
    for ax, (key, label) in zip(axes.flat, panels):
        for name in dict.fromkeys(r[series] for r in rows):
            pts = sorted((int(r["depth"]), float(r[key])) for r in rows if r[series] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xticks(depths)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


MEMORY_PANELS = [("saved_MiB", "activations saved for backward (MiB)"),
                 ("peak_MiB", "peak memory of a training step (MiB)"),
                 ("step_MiB", "rise of memory during the step (MiB)")]


def write_png(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Saved activations, peak memory, the step's memory rise and step time vs depth, per variant."""
    plot_vs_depth(rows, path, title, series="variant", xlabel="reversible depth R",
                  panels=MEMORY_PANELS + [("step_s", "step time (s, median)")])


def png_title(case: str, width: int, patch: int, device: str) -> str:
    return f"memory vs depth ({case}, K={width}, patch {patch}^{CASES[case].spatial_dims}, {device})"


def replot(csv: Path, png: Path) -> None:
    """Redraw the PNG from a CSV this benchmark wrote (``--csv``), without measuring again."""
    import pandas as pd

    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no such CSV (write one with --csv)")
    df = pd.read_csv(csv)
    need = {"case", "variant", "depth", "width", "patch", "device", "saved_MiB", "peak_MiB", "step_MiB", "step_s"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"{csv}: not a 'medsr bench memory --csv' file (missing {', '.join(missing)})")
    r = df.iloc[0]
    write_png(df.to_dict("records"), png, png_title(str(r["case"]), int(r["width"]), int(r["patch"]), str(r["device"])))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd


    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depths", default="0,2,4,8,16,32", help="comma-separated reversible depths R (default %(default)s)")
    parser.add_argument("--width", type=int, default=64, help="core width K (default %(default)s)")
    parser.add_argument("--channels", type=int, default=6, help="image channels (6 = DTI; default %(default)s)")
    parser.add_argument("--patch", type=int, default=24, help="patch side (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per config, median reported (>= 5; default %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} (default: all available)")
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last(_3d) memory layout")
    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="torch threads per config: auto (the fastest count on a conv3d probe, chosen once, "
                             "default), a number, or 0 (torch's own count)")
    parser.add_argument("--2d", dest="two_d", action="store_true", help="benchmark the 2D generators instead (when registered)")
    parser.add_argument("--size", type=int, default=256, help="--2d: image side (default %(default)s, Maps)")
    parser.add_argument("--width-cyclegan", type=int, default=32, help="--2d: CycleGAN ResNet width (default %(default)s)")
    parser.add_argument("--width-revgan", type=int, default=56,
                        help="--2d: RevGAN width (default %(default)s: parameters match CycleGAN's at depth 6)")
    parser.add_argument("--csv", type=Path, default=None, help="write the table as CSV here")
    parser.add_argument("--png", type=Path, default=None, help="write memory/time vs depth plots here")
    parser.add_argument("--replot", type=Path, default=None, metavar="CSV",
                        help="only redraw --png from a CSV written by --csv (no measurement)")


def run(args: argparse.Namespace) -> int:
    if args.replot is not None:
        if args.png is None:
            raise ValueError("--replot needs --png (the figure to draw)")
        replot(args.replot, args.png)
        print(f"wrote {args.png} from {args.replot}")
        return 0
    if args.two_d:  # the paper's Table 5: CycleGAN vs RevGAN generators (section at the end)
        return run_2d(args)
    case = "2d" if args.two_d else "3d"
    if case not in CASES:
        raise ValueError(f"no {case} generator registered for the memory benchmark (CASES has {sorted(CASES)})")
    try:
        depths = sorted({int(d) for d in str(args.depths).split(",") if d.strip()})
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    if not depths or min(depths) < 0:
        raise ValueError(f"--depths must be non-negative integers, got {args.depths!r}")
    if args.repeats < 5:
        raise ValueError(f"--repeats must be >= 5 for a meaningful median, got {args.repeats}")
    if args.width % 2 and max(depths) > 0:
        raise ValueError(f"--width must be even (the reversible core splits channels in half), got {args.width}")
    device = str(resolve_device(args.device))
    variants = None
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"--variants: unknown {bad}; expected a subset of {list(VARIANTS)}")
        if "memcnn" in variants and not memcnn_available():
            raise ValueError("--variants memcnn: memcnn is not installed (pip install memcnn --no-deps)")
    elif not memcnn_available():
        print("memcnn not installed: comparing reversible vs plain only", file=sys.stderr)
    for out in (args.csv, args.png):
        if out is not None and not out.parent.is_dir():
            raise FileNotFoundError(f"{out}: output folder does not exist")

    rows, probes = run_benchmark(
        case=case, depths=depths, width=args.width, channels=args.channels, patch=args.patch,
        repeats=args.repeats, device=device, variants=variants, channels_last=args.channels_last,
        threads=bench_threads(args.threads),
    )
    mem = "CUDA max_memory_allocated" if device.startswith("cuda") else "peak RSS of a fresh subprocess"
    print(f"medsr bench memory: {case}, K={args.width}, C={args.channels}, patch {args.patch}, batch 1, "
          f"device {device}, threads {torch.get_num_threads()}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}; peak = {mem}")
    print(format_table(rows))
    print("conv probe (forward, 3^d, reflect padding, same layout; wall and CPU clocks): " + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in probes.items()))
    for line in check_targets(rows):
        print(line)
    if args.csv is not None:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.png is not None:
        write_png(rows, args.png, png_title(case, args.width, args.patch, device))
        print(f"wrote {args.png}")
    return 0


# --------------------------------------------------------------------------------------------
# 2D: the paper's Table 5 (CycleGAN vs unpaired RevGAN generator memory vs depth, on Maps)
# --------------------------------------------------------------------------------------------
# Added by the 2D module. The same measuring functions (measure_memory / measure_in_subprocess)
# run two more cases: "2d" = the 2D RevGAN generator (rev_resnet2d: variants reversible, plain,
# memcnn) and "2d_cyclegan" = the CycleGAN ResNet baseline (resnet2d; no variants). One step trains
# both directions, as the unpaired models do. Default widths match parameters at depth 6 (paper:
# both ~3.9 M): CycleGAN K=32, RevGAN K=56.
DEPTHS_2D = (6, 9, 12, 18, 30)


class _BothDirections(nn.Module):
    """``forward(x) = (F(x) + G(x)) / 2``: one step through both directions of a 2D generator.

    ``core`` is registered before ``gen`` so the core's convs are named ``core.*`` (the
    recomputation FLOP count of :func:`conv_flops` looks for that prefix).
    """
    def __init__(self, gen: nn.Module) -> None:
        super().__init__()
        if hasattr(gen, "core"):
            self.core = gen.core
        self.gen = gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) -> (1, 3, H, W)."""
        return 0.5 * (self.gen(x) + self.gen.reverse(x))


def _build_2d(name: str) -> Callable[[int, str, int, int], nn.Module]:
    def build(depth: int, variant: str, width: int, channels: int) -> nn.Module:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if name == "resnet2d":
            return _BothDirections(create_model("resnet2d", in_channels=channels, width=width, depth=depth))
        gen = create_model("rev_resnet2d", in_channels=channels, width=width, depth=depth,
                           memory_efficient=(variant == "reversible"))
        if variant == "memcnn" and depth > 0:
            gen.core = MemcnnCore(gen.core)
        return _BothDirections(gen)

    return build


def _image_shape(channels: int, size: int) -> tuple[int, ...]:
    return (1, channels, size, size)


CASES["2d"] = GeneratorCase(2, _build_2d("rev_resnet2d"), _image_shape)
CASES["2d_cyclegan"] = GeneratorCase(2, _build_2d("resnet2d"), _image_shape)


def run_benchmark_2d(
    *, depths: list[int], size: int, width_cyclegan: int = 32, width_revgan: int = 56,
    device: str = "cpu", threads: int = 0, plain: bool = True, progress: bool = True,
) -> list[dict[str, Any]]:
    """Memory of one two-direction training step of CycleGAN and RevGAN generators per depth.

    Returns rows of :func:`measure_memory` with ``model`` (``cyclegan``, ``revgan``, and with
    ``plain`` ``revgan_plain``: the same reversible blocks through plain autograd) and
    ``params_MiB`` (float32 weights) added.
    """
    models = [("cyclegan", "2d_cyclegan", width_cyclegan, "plain"), ("revgan", "2d", width_revgan, "reversible")]
    if plain:
        models.append(("revgan_plain", "2d", width_revgan, "plain"))
    in_subprocess = not device.startswith("cuda")
    rows = []
    for depth, (label, case, width, variant) in tqdm([(d, m) for d in depths for m in models], desc="bench memory 2d",
                                                      unit="run", disable=not progress):
        cfg = dict(case=case, variant=variant, depth=depth, width=width, channels=3, patch=size, device=device,
                   channels_last=False, threads=threads, seed=0)
        row = measure_in_subprocess(cfg) if in_subprocess else measure_memory(cfg)
        row["model"] = label
        row["params_MiB"] = row["params_M"] * 1e6 * 4 / MIB
        rows.append(row)
    return rows


def format_table_2d(rows: list[dict[str, Any]]) -> str:
    """Paper Table 5 layout: per depth, each model's weights, saved activations and step peak rise (MiB)."""
    labels = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["depth"]): r for r in rows}
    head = ["depth"] + [f"{m} {k}" for m in labels for k in ("params_M", "weights_MiB", "activations_MiB", "step_MiB")]
    cells = [head]
    for d in sorted({r["depth"] for r in rows}):
        line = [str(d)]
        for m in labels:
            r = by[(m, d)]
            line += [f"{r['params_M']:.2f}", f"{r['params_MiB']:.1f}", f"{r['saved_MiB']:.1f}", f"{r['step_MiB']:.0f}"]
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(c, widths)) for c in cells)


def check_targets_2d(rows: list[dict[str, Any]]) -> list[str]:
    """RevGAN saved activations flat in depth (<= 2 %), CycleGAN's growing linearly."""
    out = []
    for label, flat in (("revgan", True), ("cyclegan", False), ("revgan_plain", False)):
        pts = sorted((r["depth"], r["saved_MiB"]) for r in rows if r["model"] == label)
        if len(pts) < 2:
            continue
        (d0, a), (d1, b) = pts[0], pts[-1]
        rel = (b - a) / a
        if flat:
            out.append(f"{'PASS' if abs(rel) <= 0.02 else 'FAIL'} {label} activations flat: {a:.1f} MiB at depth {d0}, "
                       f"{b:.1f} MiB at depth {d1} ({100 * rel:+.1f}%, target within 2%)")
        else:
            per = (b - a) / (d1 - d0)
            out.append(f"{'PASS' if per > 0 else 'FAIL'} {label} activations grow: {a:.1f} -> {b:.1f} MiB "
                       f"from depth {d0} to {d1} ({per:.2f} MiB per block)")
    return out


def write_png_2d(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Saved activations and step peak vs depth, one line per model."""
    plot_vs_depth(rows, path, title, series="model", xlabel="depth (residual / reversible blocks)",
                  panels=MEMORY_PANELS)


def run_2d(args: argparse.Namespace) -> int:
    """``medsr bench memory --2d``: the paper's Table 5 in this project's terms."""
    given = str(args.depths)
    text = ",".join(map(str, DEPTHS_2D)) if given == "0,2,4,8,16,32" else given  # the 3D default -> 2D default
    try:
        depths = sorted({int(d) for d in text.split(",") if d.strip()})
    except ValueError:
        raise ValueError(f"--depths must be comma-separated integers, got {args.depths!r}") from None
    if not depths or min(depths) < 0:
        raise ValueError(f"--depths must be non-negative integers, got {args.depths!r}")
    if args.size % 4 or args.size < 16:
        raise ValueError(f"--size must be a multiple of 4 and >= 16 (two stride-2 convs), got {args.size}")
    if args.width_revgan % 2:
        raise ValueError(f"--width-revgan must be even (the core splits 4K channels in half), got {args.width_revgan}")
    device = str(resolve_device(args.device))
    for out in (args.csv, args.png):
        if out is not None and not out.parent.is_dir():
            raise FileNotFoundError(f"{out}: output folder does not exist")
    rows = run_benchmark_2d(depths=depths, size=args.size, width_cyclegan=args.width_cyclegan,
                            width_revgan=args.width_revgan, device=device, threads=bench_threads(args.threads))
    mem = "CUDA max_memory_allocated" if device.startswith("cuda") else "peak RSS of a fresh subprocess"
    print(f"medsr bench memory --2d: {args.size}x{args.size} RGB, batch 1, one step through both directions; "
          f"CycleGAN K={args.width_cyclegan}, RevGAN K={args.width_revgan}; device {device}; "
          f"activations = bytes saved for backward; peak = {mem}")
    print(format_table_2d(rows))
    for line in check_targets_2d(rows):
        print(line)
    if args.csv is not None:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.png is not None:
        write_png_2d(rows, args.png, f"2D generator memory vs depth ({args.size}x{args.size}, {device})")
        print(f"wrote {args.png}")
    return 0
