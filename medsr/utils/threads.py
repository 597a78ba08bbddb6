"""CPU threads for torch that follow what the machine delivers (``threads: auto``).

A user's machine is rarely idle. With another process on one core, torch's OpenMP threads that
spin while they wait make a two-thread step several times slower than a one-thread step, and the
best thread count changes when the other process starts or stops. So the count is *measured*, the
way ``torch.backends.cudnn.benchmark`` times kernels: the caller's own steps are timed at the
candidate counts at the start and again every ``recheck_s`` seconds (or at once when the step rate
moves), and the fastest count is kept (:class:`ThreadTuner`). One-shot work such as ``medsr infer``
times a small probe of the same work instead (:func:`choose_threads`).

Two facts about the machine bound the candidates (:func:`usable_cores`): the CPUs this process may
run on (``os.sched_getaffinity``) and a cgroup CPU quota (``cpu.max``, a container's ``--cpus``).

OpenMP's wait policy is read once, when torch loads libgomp, so the command line sets
``OMP_WAIT_POLICY=PASSIVE`` (:func:`passive_wait_policy`) before anything imports torch: waiting
threads then sleep instead of spinning on a core another process needs. Subprocesses and data
workers inherit it. A value the user set is kept, and so is ``OMP_NUM_THREADS``: ``auto`` then uses
that number.

This module imports torch only inside functions: the command line calls it before torch loads.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Generator, MutableMapping
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
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a wait policy; True when set here.

    Call it before torch is imported: libgomp reads the variable once, when it loads. Processes
    started afterwards (DataLoader workers, ``medsr prep --workers``, benchmark subprocesses)
    inherit it through the environment.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
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


class ThreadTuner:
    """Keep torch's thread count at the fastest for a loop of similar steps; watch the step rate.

    Call :meth:`tick` after every step; it returns the lines worth showing (the choice, a change
    of choice, a slowdown). Step times are wall-clock times between ticks, so everything a step
    costs counts (data loading included). With ``auto``:

    * after ``warmup_steps``, the candidate counts (:func:`candidates`) are timed against each
      other, ``trial_steps`` steps each in alternation (:func:`_duels`), and the count with the least
      median step time is kept;
    * the trial is repeated every ``recheck_s`` seconds, and at once (at most every ``min_gap_s``)
      when the median of the last ``watch_steps`` steps moved by more than a factor
      ``1 / recheck_ratio`` from what the last trial measured (another process started or stopped);
      a recheck switches only to a count at least 5% faster. Rechecks wait at least 20 times the
      last trial's duration, so trials stay a small share of the run on any machine.

    With any setting, when the step rate stays below ``slow_ratio`` of the rate at the start of
    the run (after a recheck, with ``auto``), one line says so, once.

    Args:
        setting: ``auto``, 0 (torch's default) or a number of threads.
        measure: False keeps ``auto`` at a fixed count (``static_reason`` says why: determinism,
            several ranks, a GPU step); the rate is still watched.
        static_reason: shown with a count that ``auto`` does not measure.
        keep: with ``measure=False``, ``auto`` leaves torch's count as it is (else: every usable core).
        share: processes sharing the cores (DDP ranks on one machine).
        cause: the likely cause named by the slowdown line.
        clock, set_threads, cores: injectable for tests.
    """

    def __init__(
        self,
        setting: ThreadSetting = AUTO,
        *,
        measure: bool = True,
        static_reason: str = "",
        keep: bool = False,
        share: int = 1,
        warmup_steps: int = 2,
        trial_steps: int = 3,
        watch_steps: int = 20,
        recheck_s: float = 60.0,
        min_gap_s: float = 10.0,
        recheck_ratio: float = 0.67,
        slow_ratio: float = 0.5,
        cause: str = "another process is likely using the CPU",
        unit: str = "steps/s",
        cores: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = _torch_set,
    ) -> None:
        self.cores = usable_cores() if cores is None else cores
        reason = static_reason or ("" if measure else "not measured here")
        self.choice = static_choice(setting, reason=reason, keep=keep, cores=self.cores, share=share)
        self.tuning = self.choice is None
        self.threads = 0
        self.warmup_steps, self.trial_steps, self.watch_steps = warmup_steps, trial_steps, watch_steps
        self.recheck_s, self.min_gap_s = recheck_s, min_gap_s
        self.recheck_ratio, self.slow_ratio = recheck_ratio, slow_ratio
        self.cause, self.unit = cause, unit
        self._clock, self._set = clock, set_threads
        self._last: float | None = None
        self._ticks = 0
        self._trial: Generator[int, float, tuple[int, dict[int, float]]] | None = None  # see _duels
        self.trials = 0  # trials begun
        self._trial_end = 0.0
        self._trial_start = 0.0
        self._trial_cost = 0.0  # seconds the last trial took
        self._window: list[float] = []
        self.start_rate: float | None = None  # steps/s at the start of the run (the slowdown reference)
        self.rate: float | None = None  # the latest measured rate
        self._expected = 0.0  # the rate the last trial measured for the count in use
        self._slow_windows = 0
        self._said_slow = False
        self._pending_slow = False

    # ------------------------------------------------------------------ public
    def start(self) -> list[str]:
        """Set the initial count and start the clock (call right before the first step)."""
        lines = []
        if self.tuning:
            self._apply(self.cores)  # the most threads until measured
        else:
            assert self.choice is not None
            if self.choice.apply:
                self._apply(self.choice.threads)
            else:
                self.threads = self.choice.threads
            if self.choice.how != "set":
                lines.append(self.choice.describe(self.unit))
        self._last = self._clock()
        return lines

    def tick(self, step: int | None = None) -> list[str]:
        """Account for the step just finished (``step``: its number, for messages); lines to show."""
        now = self._clock()
        if self._last is None:
            self._last = now
            return []
        dt, self._last = now - self._last, now
        self._ticks += 1
        if self._ticks < self.warmup_steps:  # the first steps set up memory and kernels: not timed
            return []
        if self.tuning and self.trials == 0:
            self._begin_trial()
            return []
        if self._trial is not None:
            return self._trial_tick(dt, now, step)
        return self._watch(dt, now, step)

    # ------------------------------------------------------------------ trials
    def _apply(self, n: int) -> None:
        if n != self.threads:
            self._set(n)
            self.threads = n

    def _begin_trial(self) -> None:
        self._trial = _duels(candidates(self.cores), self.trial_steps)
        self.trials += 1
        self._trial_start = self._clock()
        self._apply(next(self._trial))

    def _trial_tick(self, dt: float, now: float, step: int | None) -> list[str]:
        assert self._trial is not None
        try:
            self._apply(self._trial.send(dt))
            return []
        except StopIteration as done:
            self._trial = None
            return self._end_trial(*done.value, now, step)

    def _end_trial(self, best: int, rates: dict[int, float], now: float, step: int | None) -> list[str]:
        first = self.start_rate is None
        previous = self.choice.threads if self.choice is not None else None
        if previous is not None and previous in rates and rates[best] < _SWITCH_FASTER * rates[previous]:
            best = previous  # not clearly faster: stay
        self._apply(best)
        self.choice = ThreadChoice(best, "measured", dict(rates), self.cores)
        self.rate = self._expected = rates[best]
        self._trial_end = now
        # Trials cost steps at slower counts: keep them to a small share of the time however slow a step is.
        self._trial_cost = now - self._trial_start
        self._window.clear()
        lines = []
        if first:
            self.start_rate = rates[best]
            lines.append(self.choice.describe(self.unit))
        elif best != previous:
            at = f" at step {step}" if step is not None else ""
            lines.append(f"threads auto: {previous} -> {best}{at} (measured {_rates_text(rates, self.unit)})")
        if self._pending_slow:
            self._pending_slow = False
            lines += self._maybe_say_slow(self.rate)
        return lines

    # ------------------------------------------------------------------ watching
    def _watch(self, dt: float, now: float, step: int | None) -> list[str]:
        self._window.append(dt)
        if self.tuning and now - self._trial_end >= max(self.recheck_s, TRIAL_SHARE * self._trial_cost):
            self._begin_trial()
            return []
        if len(self._window) < self.watch_steps:
            return []
        self.rate = 1.0 / max(statistics.median(self._window), 1e-9)
        self._window.clear()
        if self.start_rate is None:  # a fixed count: the first window is the reference
            self.start_rate = self._expected = self.rate
            return []
        if self.tuning:
            # The rate moved away from what the last trial measured (another process started or
            # stopped): measure again now rather than at the next periodic recheck.
            moved = self.rate / self._expected
            if (moved < self.recheck_ratio or moved > 1.0 / self.recheck_ratio) and \
                    now - self._trial_end >= max(self.min_gap_s, TRIAL_SHARE * self._trial_cost):
                self._pending_slow = self.rate < self.slow_ratio * self.start_rate
                self._begin_trial()
            return []
        # A fixed count: two slow windows in a row (one may hold a checkpoint or a preview).
        slow = self.rate < self.slow_ratio * self.start_rate
        self._slow_windows = self._slow_windows + 1 if slow else 0
        return self._maybe_say_slow(self.rate) if self._slow_windows >= 2 else []

    def _maybe_say_slow(self, rate: float) -> list[str]:
        if self._said_slow or self.start_rate is None or rate >= self.slow_ratio * self.start_rate:
            return []
        self._said_slow = True
        return [f"speed fell to {rate / self.start_rate:.2f}x of this run's start "
                f"({self.start_rate:.3g} -> {rate:.3g} {self.unit} with {self.threads} thread(s)): {self.cause}"]


def training_tuner(setting: ThreadSetting, *, device_type: str = "cpu", deterministic: bool = False,
                   world_size: int = 1) -> ThreadTuner:
    """The :class:`ThreadTuner` of a training loop.

    ``auto`` is measured for a CPU training in one process. It is not measured with
    ``deterministic`` (a different count changes the order of float sums, so a resumed run would
    differ: every usable core is used), on a GPU (the step's threads matter little: torch's count
    is kept), or under torchrun (the ranks on one machine share its cores; torchrun also sets
    ``OMP_NUM_THREADS``, which wins).
    """
    reason, keep = "", False
    if deterministic:
        reason = "train.deterministic (another count changes float sums)"
    elif device_type != "cpu":
        reason, keep = f"the step runs on {device_type}", True
    share = int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) if world_size > 1 else 1
    cause = ("another process is likely using the CPU" if device_type == "cpu"
             else f"another process is likely using the {device_type.upper()} or the CPU")
    return ThreadTuner(setting, measure=not reason, static_reason=reason, keep=keep, share=share, cause=cause)


__all__ = [
    "AUTO", "ThreadChoice", "ThreadSetting", "ThreadTuner", "candidates", "cgroup_cpu_limit", "choose_threads",
    "bench_threads", "conv_probe",
    "env_threads", "parse_threads", "passive_wait_policy", "static_choice", "training_tuner",
    "usable_cores",
]

