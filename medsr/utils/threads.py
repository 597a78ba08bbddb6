"""CPU threads for torch that follow what the machine delivers (``threads: auto``).

A user's machine is rarely idle. With another process on one core, torch's OpenMP threads that
spin while they wait make a two-thread step several times slower than a one-thread step, and the
best thread count changes when the other process starts or stops. So the count is *measured*, the
way ``torch.backends.cudnn.benchmark`` times kernels: the caller's own steps are timed at the
candidate counts at the start and again every ``recheck_s`` seconds (or at once when the step rate
moves), and the fastest count is kept (:class:`medsr.utils.thread_tuner.ThreadTuner`). One-shot work such as ``medsr infer``
times a small probe of the same work instead (:func:`choose_threads`).

Two facts about the machine bound the candidates (:func:`usable_cores`): the CPUs this process may
run on (``os.sched_getaffinity``) and a cgroup CPU quota (``cpu.max``, a container's ``--cpus``).

OpenMP's wait policy is read once, when torch loads libgomp, so the command line sets it
(:func:`passive_wait_policy`) before anything imports torch: ``OMP_WAIT_POLICY=PASSIVE``, so waiting
threads sleep instead of spinning on a core another process needs. Subprocesses and data workers inherit
it. A wait policy or ``GOMP_SPINCOUNT`` the user set is kept (on a machine of its own, a short spin such
as ``GOMP_SPINCOUNT=30000`` trains faster: docs/benchmarks.md), and so is ``OMP_NUM_THREADS``: ``auto``
then uses that number.

This module imports torch only inside functions: the command line calls it before torch loads.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Generator, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

AUTO = "auto"
# train.threads / --threads: "auto", 0 (torch's own default) or a number of threads.
ThreadSetting = Union[int, Literal["auto"]]

# A candidate this much slower than the best so far ends the search (counts are searched from the
# most threads down; step time against threads has one minimum on a CPU).
_STOP_SLOWER = 1.10
# A recheck switches only to a count at least this much faster than the current one (noise margin).
_SWITCH_FASTER = 1.05
# Rechecks start at least this many times the last trial's duration after it (trials <= ~5% of the time).
TRIAL_SHARE = 20.0


def passive_wait_policy(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a wait policy or a spin count (``GOMP_SPINCOUNT``);
    True when set here.

    Measured with ``medsr bench busy`` on an idle 2-core machine (docs/benchmarks.md), a 0.3 ms spin
    (``GOMP_SPINCOUNT=30000``) trains about a third faster alone, but beside other jobs ``auto``'s trials
    cost more and the busy-machine ratios fall below their targets; PASSIVE meets them, so it is the
    default and the spin is the user's choice.

    Call it before torch is imported: libgomp reads the variables once, when it loads. Processes
    started afterwards (DataLoader workers, ``medsr prep --workers``, benchmark subprocesses)
    inherit them through the environment.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def parse_threads(text: str | int) -> ThreadSetting:
    """``auto``, 0 or a positive integer (for ``--threads``); ValueError otherwise (argparse names the flag)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower()
        if s == AUTO:
            return AUTO
        try:
            value = int(s)
        except ValueError:
            raise ValueError(f"expected 'auto' or a number of threads, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected 'auto' or a number of threads >= 0, got {value}")
    return value


parse_threads.__name__ = "threads"  # argparse: "argument --threads: invalid threads value: 'x'"


def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
                     ) -> float | None:
    """CPUs' worth of time the cgroup quota allows this process (``quota / period``), or None when unlimited.

    Reads cgroup v2 ``cpu.max`` of this process's cgroup and every parent (the smallest quota wins),
    else cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    """
    root = Path(root)
    limits: list[float] = []
    rel = ""
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
    except OSError:
        pass
    here = root / rel if rel else root
    for folder in [here, *here.parents]:
        if folder == root.parent or not str(folder).startswith(str(root)):
            break
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max" and float(period) > 0:
                limits.append(float(quota) / float(period))
        except (OSError, ValueError):
            continue
    if not limits:
        for v1 in (root / "cpu", root / "cpu,cpuacct"):
            try:
                quota = float((v1 / "cpu.cfs_quota_us").read_text())
                period = float((v1 / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
            break
    return min(limits) if limits else None


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        # A quota of 1.5 CPUs runs 2 threads at 75% each, throttled in bursts: count whole CPUs.
        n = min(n, max(1, int(limit)))
    return max(1, n)


# The thread-count variables of the math libraries a worker process may load (torch's OpenMP, numpy's
# OpenBLAS, MKL): read once, when each library loads in the new process.
WORKER_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def worker_threads(workers: int, environ: MutableMapping[str, str] | None = None) -> Iterator[int]:
    """Give processes started inside the block (``workers`` of them) an equal share of the usable cores.

    Each math library starts one thread per core in every process, so N workers on N cores run N^2
    threads that wait for each other and for any other job (a training beside ``medsr prep --workers``);
    joblib's loky workers cap theirs the same way. Variables the user set are kept. Yields the share.
    """
    env = os.environ if environ is None else environ
    share = max(1, usable_cores() // max(1, workers))
    saved = {k: env.get(k) for k in WORKER_THREAD_VARS}
    for k in WORKER_THREAD_VARS:
        env.setdefault(k, str(share))
    try:
        yield share
    finally:
        for k, v in saved.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when the user set it to a positive integer, else None."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def candidates(cores: int) -> list[int]:
    """Thread counts to try, most first: ``cores``, ``cores - 1`` (one core taken by another process),
    then halving down to 1. E.g. 2 -> [2, 1]; 16 -> [16, 15, 8, 4, 2, 1]."""
    out = {cores, max(cores - 1, 1)}
    n = cores
    while n > 1:
        n //= 2
        out.add(max(n, 1))
    return sorted(out, reverse=True)


def _torch_set(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def _torch_get() -> int:
    import torch

    return int(torch.get_num_threads())


def _duels(counts: list[int], samples: int) -> Generator[int, float, tuple[int, dict[int, float]]]:
    """Time thread counts against each other; a generator that yields the count for the next step and
    is sent that step's seconds. Returns (fastest count, rate per count tried).

    Counts are tried most first. The best so far and the next count run in alternation, ``samples``
    steps each, after one untimed step of the newcomer (its thread pool and kernels are set up at its
    first step): a load that comes and goes during a trial then hits both alike. The search stops
    once a count is clearly slower than the best (step time against threads has one minimum).
    """
    best = counts[0]
    yield best  # untimed: the first step at this count
    rates: dict[int, float] = {}
    if len(counts) == 1:
        times = []
        for _ in range(samples):
            times.append((yield best))
        return best, {best: 1.0 / max(statistics.median(times), 1e-9)}
    for n in counts[1:]:
        yield n  # untimed
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(samples):
            mine.append((yield best))
            theirs.append((yield n))
        rates[best] = 1.0 / max(statistics.median(mine), 1e-9)
        rates[n] = 1.0 / max(statistics.median(theirs), 1e-9)
        if rates[n] > rates[best]:
            best = n
        elif rates[n] * _STOP_SLOWER < rates[best]:  # clearly slower: fewer threads won't help
            break
    return best, rates


def _rates_text(rates: dict[int, float], unit: str) -> str:
    return ", ".join(f"{n}: {r:.3g}" for n, r in rates.items()) + f" {unit}"


@dataclass
class ThreadChoice:
    """The thread count chosen and why.

    Attributes:
        threads: the count set in torch.
        how: ``measured``, ``set`` (an explicit number), ``OMP_NUM_THREADS``, ``torch default`` or a
            reason the count was not measured (``deterministic``, ``one process per core``, ...).
        rates: measured rate per count tried (empty when not measured).
        cores: usable cores (:func:`usable_cores`).
    """

    threads: int
    how: str
    rates: dict[int, float] = field(default_factory=dict)
    cores: int = 1
    apply: bool = True  # False: torch's count is left as it is

    def describe(self, unit: str = "steps/s") -> str:
        """One line: ``threads auto: 2 of 2 usable cores (measured 2: 14.1, 1: 9.8 steps/s)``."""
        if self.how == "measured":
            return (f"threads auto: {self.threads} of {self.cores} usable core(s) "
                    f"(measured {_rates_text(self.rates, unit)})")
        return f"threads {self.threads} ({self.how}; {self.cores} usable core(s))"


def static_choice(setting: ThreadSetting, *, reason: str = "", keep: bool = False, cores: int | None = None,
                  share: int = 1) -> ThreadChoice | None:
    """The count for ``setting`` when nothing is measured, or None when ``auto`` should be measured.

    Args:
        setting: ``auto``, 0 (torch's default, left alone) or a number of threads.
        reason: why ``auto`` is not measured here (e.g. ``deterministic``); empty = measure it.
        keep: with a ``reason``, leave torch's count as it is (else: every usable core).
        cores: usable cores (default :func:`usable_cores`).
        share: processes sharing the cores (DDP ranks on one machine): ``auto`` takes ``cores // share``.
    """
    cores = usable_cores() if cores is None else cores
    if setting != AUTO:
        n = int(setting)
        if n > 0:
            return ThreadChoice(n, "set", cores=cores)
        return ThreadChoice(_torch_get(), "torch default", cores=cores, apply=False)
    env = env_threads()
    if env is not None:
        return ThreadChoice(env, "OMP_NUM_THREADS", cores=cores)
    if share > 1:
        return ThreadChoice(max(1, cores // share), f"auto: {share} processes share the cores", cores=cores)
    if reason:
        if keep:
            return ThreadChoice(_torch_get(), f"auto, torch's count: {reason}", cores=cores, apply=False)
        return ThreadChoice(cores, f"auto, not measured: {reason}", cores=cores)
    if cores == 1:
        return ThreadChoice(1, "auto: one usable core", cores=cores)
    return None


def choose_threads(setting: ThreadSetting, probe: Callable[[], object], *, repeats: int = 3,
                   cores: int | None = None, set_threads: Callable[[int], None] = _torch_set,
                   clock: Callable[[], float] = time.perf_counter) -> ThreadChoice:
    """Set torch's thread count for one-shot work and return the choice.

    ``auto`` times ``probe`` (a small piece of the real work) at the candidate counts, ``repeats``
    calls each in alternation (see :func:`_duels`); the fastest count is set.
    Explicit numbers, ``OMP_NUM_THREADS`` and one usable core skip the probe.
    """
    cores = usable_cores() if cores is None else cores
    fixed = static_choice(setting, cores=cores)
    if fixed is not None:
        if fixed.apply:
            set_threads(fixed.threads)
        return fixed
    trial = _duels(candidates(cores), max(1, repeats))
    n = next(trial)
    while True:
        set_threads(n)
        t0 = clock()
        probe()
        try:
            n = trial.send(clock() - t0)
        except StopIteration as done:
            best, rates = done.value
            break
    set_threads(best)
    return ThreadChoice(best, "measured", rates, cores)


def conv_probe(channels: int = 16, edge: int = 24, batch: int = 2) -> Callable[[], None]:
    """A small 3D convolution step (forward and backward; (batch, channels, edge^3)), the work medsr's
    networks are made of: the probe for :func:`choose_threads` where the real work cannot be sampled
    (benchmarks resolve ``--threads auto`` with it once, so every configuration they compare runs with
    the same count)."""
    import torch

    conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, edge, edge, edge, requires_grad=True)

    def run() -> None:
        conv(x).square().mean().backward()

    return run


def bench_threads(setting: ThreadSetting) -> int:
    """A benchmark's ``--threads`` as a count, set in torch now: ``auto`` is timed once on
    :func:`conv_probe`; 0 stays 0 (torch's own count, left alone)."""
    if setting != AUTO and int(setting) == 0:
        return 0
    return choose_threads(setting, conv_probe()).threads


__all__ = [
    "AUTO", "ThreadChoice", "ThreadSetting", "candidates", "cgroup_cpu_limit", "choose_threads",
    "bench_threads", "conv_probe",
    "env_threads", "parse_threads", "passive_wait_policy", "static_choice",
    "usable_cores",
]

