"""Shared machinery of the memory benchmarks (``medsr bench memory``, 3D and ``--2d``): the generator
cases, one training step measured (saved bytes, peak memory, FLOPs, times) in a fresh process,
and the CSV / depth-plot writers."""
from __future__ import annotations

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


# The child imports the module that registers the case (``cases_module``) before measuring it.
_CHILD_CODE = ("import importlib,json,sys; importlib.import_module(sys.argv[2]); "
               "from benchmarks.memory_common import measure_memory; print(json.dumps(measure_memory(json.loads(sys.argv[1]))))")


def measure_in_subprocess(cfg: dict[str, Any], timeout: float | None = None,
                          cases_module: str = __name__) -> dict[str, Any]:
    """:func:`measure_memory` in a fresh Python process, so its peak RSS belongs to this config alone.

    ``cases_module`` is imported in that process first: the module that registers ``cfg['case']`` in
    :data:`CASES` (this one for ``3d``)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # A fixed mmap threshold turns off glibc's dynamic one, under which freed tensors of a few MiB
    # stay in the heap, so RSS overstates live memory (measured, reversible R=16, K=64, 24^3:
    # 73 MiB above the pre-step RSS without it, 59 MiB with it).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_CODE, json.dumps(cfg), cases_module],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench config {cfg['variant']} R={cfg['depth']} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot_vs_depth(
    rows: list[dict[str, Any]], path: Path, title: str, *, series: str, panels: list[tuple[str, str]], xlabel: str
) -> "matplotlib.figure.Figure":
    """One panel per ``(column, label)`` in ``panels`` (two per row): that column vs depth, one line per
    ``series`` value; the depth axis is ticked at the measured (integer) depths.

    Returns:
        The figure written to ``path`` (closed; its axes still hold what was drawn)."""
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
    return fig


MEMORY_PANELS = [("saved_MiB", "activations saved for backward (MiB)"),
                 ("peak_MiB", "peak memory of a training step (MiB)"),
                 ("step_MiB", "rise of memory during the step (MiB)")]


def report(rows: list[dict[str, Any]], lines: list[str], csv: Path | None, png: Path | None,
           draw: Callable[[Path], object]) -> None:
    """Print ``lines`` (the table and its checks), then write the CSV and the figure (``draw(png)``) when asked."""
    for line in lines:
        print(line)
    if csv is not None:
        write_csv(rows, csv)
        print(f"wrote {csv}")
    if png is not None:
        draw(png)
        print(f"wrote {png}")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd


    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
