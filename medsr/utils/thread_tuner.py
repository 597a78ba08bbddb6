"""The thread tuner of a training loop: the fastest torch thread count, kept and rechecked, and a
one-line warning when the step rate falls far below the run's start (another process on the CPU).

The choices it builds on (usable cores, candidate counts, timed duels) are in :mod:`medsr.utils.threads`.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Generator

from medsr.utils.threads import (
    _SWITCH_FASTER, AUTO, TRIAL_SHARE, ThreadChoice, ThreadSetting, _duels, _rates_text, _torch_set, candidates,
    static_choice, usable_cores,
)


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


__all__ = ["ThreadTuner", "training_tuner"]
