"""``threads: auto``: the tuner keeps the count that gives the most steps per second on a simulated machine.

No test here is timed: a fake clock advances by the step time a simulated machine gives each
thread count, so every property (the fastest count is chosen, a change of load is followed, a
slowdown is said once) holds exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsr.config import Config
from medsr.utils.thread_tuner import ThreadTuner, training_tuner
from medsr.utils.threads import (
    AUTO, candidates, cgroup_cpu_limit, choose_threads, parse_threads, passive_wait_policy, static_choice,
)

ROOT = Path(__file__).resolve().parents[1]


class Machine:
    """A clock and a thread setting; ``step()`` advances the clock by ``cost[threads]`` seconds."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.threads, self.switches = dict(cost), 0.0, 0, 0

    def clock(self) -> float:
        return self.now

    def set_threads(self, n: int) -> None:
        self.threads, self.switches = n, self.switches + 1

    def step(self) -> None:
        self.now += self.cost[self.threads]


@pytest.fixture(autouse=True)
def _no_env_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def tuner_on(machine: Machine, setting=AUTO, **kw) -> ThreadTuner:
    return ThreadTuner(setting, cores=max(machine.cost), clock=machine.clock, set_threads=machine.set_threads, **kw)


def run(machine: Machine, tuner: ThreadTuner, steps: int, start: int = 0) -> list[str]:
    lines = []
    for i in range(start + 1, start + steps + 1):
        machine.step()
        lines += tuner.tick(i)
    return lines


def test_candidates_run_from_every_core_down_to_one():
    assert candidates(1) == [1]
    assert candidates(2) == [2, 1]
    assert candidates(16) == [16, 15, 8, 4, 2, 1]
    for n in range(1, 40):
        c = candidates(n)
        assert c[0] == n and c[-1] == 1 and c == sorted(set(c), reverse=True)


@pytest.mark.parametrize("best", [1, 2])
def test_auto_keeps_the_fastest_count_and_says_so(best):
    cost = {1: 0.10, 2: 0.08} if best == 2 else {1: 0.10, 2: 0.25}  # idle / beside a busy core
    m = Machine(cost)
    tuner = tuner_on(m)
    assert tuner.start() == [] and m.threads == 2
    lines = run(m, tuner, 40)
    assert m.threads == best and tuner.threads == best
    assert len(lines) == 1 and lines[0].startswith(f"threads auto: {best} of 2 usable core(s) (measured 2: ")
    assert tuner.start_rate == pytest.approx(1 / cost[best])


def test_the_search_stops_once_fewer_threads_are_clearly_slower():
    cost = {n: 1.0 / n for n in range(1, 17)}  # scales perfectly: 15 is within noise of 16, 8 clearly slower
    m = Machine(cost)
    tuner = tuner_on(m)
    tuner.start()
    lines = run(m, tuner, 30)
    assert m.threads == 16
    assert "(measured 16: 16, 15: 15, 8: 8 steps/s)" in lines[0]  # 4, 2 and 1 never tried


def test_a_recheck_follows_a_change_of_load_and_ignores_noise():
    m = Machine({1: 0.10, 2: 0.08})
    tuner = tuner_on(m, recheck_s=5.0)
    tuner.start()
    run(m, tuner, 20)
    assert m.threads == 2
    m.cost = {1: 0.10, 2: 0.25}  # another process takes a core
    lines = run(m, tuner, 200, start=20)
    assert m.threads == 1
    assert any(line.startswith("threads auto: 2 -> 1 at step ") for line in lines)
    switches = m.switches
    m.cost = {1: 0.100, 2: 0.098}  # 2% apart: not worth a switch
    run(m, tuner, 1000, start=220)
    assert m.threads == 1
    assert m.switches > switches  # it did measure again (periodic rechecks) ...
    assert tuner.choice.threads == 1  # ... and stayed


def test_trials_stay_a_small_share_of_the_time_when_steps_are_slow():
    """Rechecks wait 20x the last trial's duration: with 10 s steps, not every recheck_s = 60 s."""
    m = Machine({1: 10.0, 2: 12.0})
    tuner = tuner_on(m, recheck_s=60.0)
    tuner.start()
    run(m, tuner, 2000)
    trial = 4 * 12.0 + 4 * 10.0  # a trial: 1 untimed + 3 timed steps at each count
    assert 2 <= tuner.trials <= 2000 * 11.0 / (20 * trial) + 1  # not 2000 * 11 / 60 = 366


def test_a_drop_in_rate_is_measured_at_once_and_said_once():
    m = Machine({1: 0.10, 2: 0.05})
    tuner = tuner_on(m, recheck_s=1e9, watch_steps=10, min_gap_s=0.0)
    tuner.start()
    run(m, tuner, 20)
    m.cost = {1: 0.30, 2: 0.60}  # both far slower: the tuner moves to 1 thread, still < 0.5x the start
    lines = run(m, tuner, 200, start=20)
    assert m.threads == 1
    slow = [line for line in lines if "fell to" in line]
    assert len(slow) == 1
    assert "0.17x of this run's start (20 -> 3.33 steps/s with 1 thread(s)): another process" in slow[0]


def test_an_explicit_count_never_changes_but_a_slowdown_is_still_said_once():
    m = Machine({1: 0.10, 2: 0.05, 3: 0.04})
    tuner = tuner_on(m, setting=3, watch_steps=10)
    assert tuner.start() == [] and m.threads == 3
    assert run(m, tuner, 50) == []
    m.cost[3] = 0.09  # 0.44x: slow
    lines = run(m, tuner, 100, start=50)
    assert m.threads == 3 and m.switches == 1
    assert len(lines) == 1 and "fell to 0.44x" in lines[0] and "likely using the CPU" in lines[0]


def test_auto_is_not_measured_where_a_count_change_would_cost_more_than_it_saves(monkeypatch):
    assert static_choice(AUTO, cores=8) is None
    assert static_choice(AUTO, cores=1).threads == 1
    assert static_choice(4, cores=8).threads == 4
    assert static_choice(0, cores=8).apply is False
    assert static_choice(AUTO, cores=8, share=4).threads == 2
    assert static_choice(AUTO, cores=8, reason="deterministic").threads == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choice = static_choice(AUTO, cores=8)
    assert (choice.threads, choice.how) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not training_tuner(AUTO, deterministic=True).tuning
    assert not training_tuner(AUTO, device_type="cuda").tuning
    assert training_tuner(AUTO).tuning == (len(os.sched_getaffinity(0)) > 1)


def test_choose_threads_times_the_probe_at_each_count():
    m = Machine({1: 0.10, 2: 0.07, 3: 0.30, 4: 0.35})
    choice = choose_threads(AUTO, m.step, cores=4, clock=m.clock, set_threads=m.set_threads)
    assert (choice.threads, m.threads, choice.how) == (2, 2, "measured")
    assert set(choice.rates) == {4, 3, 2, 1}
    assert choose_threads(1, m.step, cores=4, set_threads=m.set_threads).threads == 1 and m.threads == 1


def test_thread_settings_parse_as_auto_or_a_count():
    assert parse_threads("auto") == parse_threads("AUTO") == AUTO
    assert parse_threads("3") == 3 and parse_threads(0) == 0
    for bad in ("-1", "fast", "1.5"):
        with pytest.raises(ValueError, match="auto"):
            parse_threads(bad)
    assert Config().train.threads == AUTO
    assert Config().with_overrides(["train.threads=2"]).train.threads == 2
    with pytest.raises(ValueError, match=r"'train.threads': expected int or 'auto', got str 'many'"):
        Config().with_overrides(["train.threads=many"])
    with pytest.raises(ValueError, match=r"'train.threads': -2 is out of range"):
        Config().with_overrides(["train.threads=-2"])


def test_cgroup_quota_v2_takes_the_smallest_limit_up_the_tree(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/job\n")
    (tmp_path / "user.slice" / "job").mkdir(parents=True)
    (tmp_path / "user.slice" / "job" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None
    (tmp_path / "user.slice" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(1.5)
    (tmp_path / "user.slice" / "job" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(0.5)


def test_cgroup_quota_v1(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "none") is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "none") == pytest.approx(3.0)


def test_wait_policy_is_passive_unless_the_user_chose_one():
    env: dict[str, str] = {}
    assert passive_wait_policy(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not passive_wait_policy(env) and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {"GOMP_SPINCOUNT": "30000"}  # a spin the user chose is theirs too
    assert not passive_wait_policy(env) and env == {"GOMP_SPINCOUNT": "30000"}


def test_worker_processes_share_the_cores_for_their_math_threads(monkeypatch):
    import medsr.utils.threads as threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    env = {"MKL_NUM_THREADS": "3"}  # the user's own choice stays
    with threads.worker_threads(2, env) as share:
        assert share == 2
        assert env == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "3"}
    assert env == {"MKL_NUM_THREADS": "3"}  # restored after the workers started
    with threads.worker_threads(8, env) as share:
        assert share == 1 and env["OMP_NUM_THREADS"] == "1"


def test_the_command_line_sets_the_wait_policy_before_torch_loads():
    """``medsr`` sets it in its own environment before importing a verb, so torch (and every process
    a verb starts) reads it; a policy the user set is kept."""
    code = ("import os, sys; from pipelines.cli import main; assert 'torch' not in sys.modules; main(['--version']);"
            "print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "ACTIVE"
