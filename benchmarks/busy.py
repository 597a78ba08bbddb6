"""``medsr bench busy``: training steps per second alone, beside a busy core and beside a second training.

A user's machine is rarely idle. For each thread policy (``auto`` and fixed counts), short trainings of
``--config`` on generated DTI volumes run in three situations:

* **alone**;
* **busy**: beside one CPU-bound process (a plain Python loop, as a browser tab or a prep job would be);
* **pair**: two trainings with the same policy at once (two users, or a sweep);
* **prep**: beside ``medsr prep hcp --workers N`` (N = the usable cores) preparing generated phantom
  subjects over and over; the prep's own subjects per second are measured too, against the same prep
  alone (its passes that ran wholly inside the training's window count).

Each training runs ``--seconds`` of training time (``train.max_minutes``) through ``pipelines.train.train``
in a worker process set up the way ``medsr train`` starts (``OMP_WAIT_POLICY=PASSIVE`` unless the
environment sets a policy or ``GOMP_SPINCOUNT``; ``OMP_NUM_THREADS`` removed); a policy ``N:spin`` runs N
threads in a worker with ``OMP_WAIT_POLICY=ACTIVE`` (threads that spin while they wait), for comparison. Workers import
torch once and serve every run (on a loaded machine the imports take longer than a run); the
trainings of a situation start together.
Steps per second come from each run's ``log.csv`` (every step logged), after its first 2 steps, so
``auto``'s trials at the start are counted. Situations run in turn, every policy within a situation
one after the other, so the ratios compare measurements taken minutes apart, not hours.

Ratios (one run): ``auto`` against the best fixed count in the same situation, and each training of a
pair against the same policy alone. ``--output`` writes them as Markdown (docs/performance.md)::

    medsr bench busy --output docs/performance.md
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITUATIONS = ("alone", "busy", "pair", "prep")
PREP_SUBJECTS = 2  # phantom subjects per prep pass (one per worker on 2 cores)
# A training beside the prep lasts this many alone-passes of the prep (at least --seconds), so that whole
# passes, about twice as slow beside a training, fall inside its window.
PREP_WINDOW_PASSES = 6
WARMUP_STEPS = 2
# What the thread policy must reach, as ratios of steps/s, checked in the report.
TARGET_AUTO_BUSY = 0.9
TARGET_AUTO_IDLE = 0.95
TARGET_PAIR = 0.4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--config", default=None,
                        help="training config (default: configs/demo.yaml, as `medsr demo` trains)")
    parser.add_argument("--policies", nargs="+", default=None, metavar="P",
                        help="thread policies: auto, a count N, or N:spin (N threads, OMP_WAIT_POLICY=ACTIVE); "
                             "default: auto, 1 and every usable core")
    parser.add_argument("--situations", nargs="+", choices=SITUATIONS, default=list(SITUATIONS),
                        help="which situations to run")
    parser.add_argument("--seconds", type=float, default=20.0, help="training time of each run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per policy and situation, in turns (auto, 1, 2, auto, ...); the median is reported "
                             "(a noisy machine)")
    parser.add_argument("--shape", type=int, nargs=3, default=[56, 64, 52], metavar=("X", "Y", "Z"),
                        help="HR shape of the generated DTI subjects (the phantom's)")
    parser.add_argument("--n-subjects", type=int, default=2, help="generated training subjects")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the data and the runs (default: a temporary folder, removed after)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as Markdown (docs/performance.md)")
    parser.add_argument("--note", default=None, help="a sentence on the machine's conditions, written under the table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def parse_policy(policy: str) -> tuple[str, bool]:
    """``auto`` / ``N`` / ``N:spin`` -> (train.threads value, spin)."""
    value, _, mode = policy.partition(":")
    if mode not in ("", "spin") or not (value == "auto" or value.isdigit() and int(value) > 0):
        raise ValueError(f"--policies {policy}: expected auto, a count N or N:spin")
    return value, mode == "spin"


def steps_per_second(log_csv: Path, warmup: int = WARMUP_STEPS) -> tuple[float, int]:
    """(steps per second, steps trained) from a run's ``log.csv`` (``step`` and cumulative ``train_s`` per row).

    Counted after the first ``warmup`` steps; a run too slow for that (spinning threads beside a busy
    core can manage a handful of steps) is counted from its start.
    """
    with open(log_csv, newline="") as f:
        rows = [(int(r["step"]), float(r["train_s"])) for r in csv.DictReader(f)]
    if not rows or rows[-1][1] <= 0:
        raise RuntimeError(f"{log_csv}: no step to measure (raise --seconds)")
    last = rows[-1]
    first = next((r for r in rows if r[0] >= warmup), None)
    if first is None or last[0] - first[0] < 2 or last[1] <= first[1]:
        return last[0] / last[1], last[0]
    return (last[0] - first[0]) / (last[1] - first[1]), last[0]


# ---------------------------------------------------------------------------- worker processes

def worker() -> int:
    """A training process that serves one request per stdin line (JSON: config, overrides, go file).

    Importing torch and its optimiser machinery takes longer than a measured run on a loaded machine,
    so each worker imports once and trains many times. Per request it builds the config, prints
    ``ready``, waits for the go file, trains, and prints one JSON line with its steps per second.
    """
    sys.path.insert(0, str(ROOT))
    from medsr.utils.threads import passive_wait_policy

    passive_wait_policy()  # as `medsr train` does, before torch loads
    import torch

    from medsr.config import load_config
    from pipelines.train import train

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not timed
    print("started", flush=True)
    for line in sys.stdin:
        spec = json.loads(line)
        cfg = load_config(spec["config"], spec["overrides"])
        print("ready", flush=True)
        go = Path(spec["go"])
        deadline = time.monotonic() + 600
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        run_dir = train(cfg, overwrite=True)
        rate, steps = steps_per_second(run_dir / "log.csv")
        print(json.dumps({"rate": rate, "steps": steps}), flush=True)
    return 0


class Worker:
    """A :func:`worker` subprocess (``spin``: with ``OMP_WAIT_POLICY=ACTIVE``)."""

    def __init__(self, spin: bool, log: Path) -> None:
        self.log = log
        self._read = 0  # how much of the log new_lines() has returned
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # auto must measure
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        if spin:  # libgomp's own spin count for ACTIVE (GOMP_SPINCOUNT would replace it)
            env["OMP_WAIT_POLICY"] = "ACTIVE"
            env.pop("GOMP_SPINCOUNT", None)
        with open(log, "w") as err:  # the trainings' own lines (threads chosen) and any traceback
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         bufsize=1)
        self.expect("started")

    def expect(self, word: str | None = None) -> str:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait()
            tail = " ".join(self.log.read_text().strip().splitlines()[-1:]) if self.log.is_file() else ""
            raise RuntimeError(f"a training worker exited (code {self.proc.returncode}): {tail} (log: {self.log})")
        if word is not None and line.strip() != word:
            raise RuntimeError(f"a training worker said {line.strip()!r}, expected {word!r}")
        return line

    def new_lines(self) -> list[str]:
        """Lines the worker's trainings printed since the last call (``medsr train: threads auto: ...``)."""
        text = self.log.read_text() if self.log.is_file() else ""
        new, self._read = text[self._read:], len(text)
        return [line for line in new.splitlines() if line.startswith("medsr train: ")]

    def send(self, spec: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_PREP_LOOP = """
import json, subprocess, sys, time
from pathlib import Path
cmd, stop, out = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
passes = []
while not stop.exists():
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    passes.append((t0, time.monotonic()))
out.write_text(json.dumps(passes))
"""


class PrepLoop:
    """``medsr prep hcp --workers N --overwrite`` on the generated raw subjects, pass after pass, in a
    subprocess, until :meth:`stop`; each pass's start and end are kept (``time.monotonic`` is one clock
    for every process)."""

    def __init__(self, work: Path, tag: str) -> None:
        from medsr.utils.threads import usable_cores

        self.stop_file, self.out = work / f"{tag}.prep-stop", work / f"{tag}.prep.json"
        self.stop_file.unlink(missing_ok=True)
        self.out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pipelines.cli", "prep", "hcp", "--input", str(work / "raw"),
               "--output", str(work / f"prep-{tag}"), "--workers", str(usable_cores()), "--overwrite"]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        self.proc = subprocess.Popen([sys.executable, "-c", _PREP_LOOP, json.dumps(cmd), str(self.stop_file),
                                      str(self.out)], cwd=ROOT, env=env)

    def stop(self, start: float, end: float) -> float:
        """Subjects per second of the passes that ran wholly in [start, end] (nan if none did); ends the loop
        after its current pass."""
        self.stop_file.touch()
        if self.proc.wait() != 0:
            raise RuntimeError("the prep loop failed (rerun `medsr prep hcp` on the generated subjects to see why)")
        inside = [(a, b) for a, b in json.loads(self.out.read_text()) if a >= start and b <= end]
        return PREP_SUBJECTS * len(inside) / sum(b - a for a, b in inside) if inside else float("nan")


def prep_alone(work: Path, seconds: float) -> float:
    """Subjects per second of the prep loop on its own, over ``seconds`` (at least one whole pass)."""
    loop = PrepLoop(work, "prep-alone")
    start = time.monotonic()
    time.sleep(seconds)
    return loop.stop(start, float("inf"))


def run_situation(situation: str, policy: str, args: argparse.Namespace, manifest: Path, work: Path,
                  workers: dict[tuple[bool, int], Worker], said: list[str] | None = None,
                  seconds: float | None = None) -> list[float]:
    """Steps per second of each training of ``situation`` under ``policy`` (workers reused by (spin, index))
    over ``seconds`` (default ``--seconds``), and for ``prep`` the prep's subjects per second; the trainings'
    own lines (the thread count chosen, a slowdown) are appended to ``said``."""
    threads, spin = parse_policy(policy)
    tag = f"{situation}-{policy.replace(':', '-')}"
    go = work / f"{tag}.go"
    go.unlink(missing_ok=True)
    team = []
    for i in range(2 if situation == "pair" else 1):
        if (spin, i) not in workers:
            workers[(spin, i)] = Worker(spin, work / f"worker{'-spin' if spin else ''}-{i}.log")
        team.append(workers[(spin, i)])
    for i, w in enumerate(team):
        overrides = [f"data.manifest={manifest}", f"output_dir={work / 'runs' / f'{tag}-{i}'}",
                     f"train.threads={threads}", f"train.max_minutes={(seconds or args.seconds) / 60.0}",
                     "train.max_steps=1000000", "train.n_epochs=1000000", "train.log_every=1",
                     "train.checkpoint_every=1000000", "train.progress=false", "train.samples=false",
                     f"train.seed={i}", *args.overrides]
        w.send({"config": args.config, "overrides": overrides, "go": str(go)})
    for w in team:
        w.expect("ready")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if situation == "busy" else None
    prep = PrepLoop(work, tag) if situation == "prep" else None
    try:
        time.sleep(0.5 if busy else 0.0)  # the loop is running before the trainings start
        start = time.monotonic()
        go.touch()
        rates = [float(json.loads(w.expect())["rate"]) for w in team]
        if prep is not None:  # the prep's subjects/s while the training ran, as one more rate
            rates.append(prep.stop(start, time.monotonic()))
            prep = None
        for w in team:
            lines = w.new_lines()
            if said is not None:
                said += [line.removeprefix("medsr train: ") for line in lines]
        return rates
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        if prep is not None:
            prep.stop(0.0, 0.0)


# ---------------------------------------------------------------------------- report

def ratios(results: dict[str, dict[str, list[float]]], prep_rate: float | None = None) -> dict[str, float]:
    """The ratios the report states, from ``results[situation][policy]`` = steps/s of each training.

    ``auto_vs_best_<situation>``: auto against the best fixed count (no ``:spin``) in that situation;
    ``pair_vs_alone_<policy>``: the slower training of a pair against the same policy alone;
    ``prep_train_vs_alone_<policy>`` and ``prep_vs_alone_<policy>``: the training beside a prep against it
    alone, and that prep's subjects/s against the prep alone (``prep_rate``).
    """
    out: dict[str, float] = {}
    for situation in ("alone", "busy"):
        got = results.get(situation, {})
        fixed = [v[0] for p, v in got.items() if p != "auto" and not p.endswith(":spin")]
        if "auto" in got and fixed:
            out[f"auto_vs_best_{situation}"] = got["auto"][0] / max(fixed)
    for policy, pair in results.get("pair", {}).items():
        alone = results.get("alone", {}).get(policy)
        if alone:
            out[f"pair_vs_alone_{policy}"] = min(pair) / alone[0]
    for policy, (train_rate, prep) in results.get("prep", {}).items():
        alone = results.get("alone", {}).get(policy)
        if alone:
            out[f"prep_train_vs_alone_{policy}"] = train_rate / alone[0]
        if prep_rate and prep == prep:  # nan: no prep pass ran wholly beside the training
            out[f"prep_vs_alone_{policy}"] = prep / prep_rate
    return out


def render(results: dict[str, dict[str, list[float]]], meta: dict[str, str], command: str, note: str | None,
           said: dict[str, list[str]] | None = None, prep_rate: float | None = None) -> str:
    """The Markdown report: the command, the machine, steps/s per policy and situation, the ratios, and
    what the trainings printed (``said``: per run label, ``auto``'s choices and any slowdown line)."""
    policies = list(dict.fromkeys(p for r in results.values() for p in r))
    r = ratios(results, prep_rate)
    lines = [
        "# Training speed on a busy machine",
        "",
        "Steps per second of a short training alone, beside one CPU-bound process (a Python loop) and beside a",
        "second training, for `train.threads: auto` and fixed thread counts. Regenerate with:",
        "",
        f"    {command}",
        "",
        f"Machine: {meta['machine']}. Config: {meta['config']} on {meta['data']}; {meta['seconds']} s of "
        f"training per run; OpenMP wait policy {meta['wait_policy']}.",
    ]
    if note:
        lines += ["", note]
    lines += ["", "| threads | alone | beside a busy core | two trainings (each) | pair / alone | beside a prep "
              "(training, prep subjects/s) |", "|---|---|---|---|---|---|"]
    for p in policies:
        alone = results.get("alone", {}).get(p)
        busy = results.get("busy", {}).get(p)
        pair = results.get("pair", {}).get(p)
        prep = results.get("prep", {}).get(p)
        cells = [f"{alone[0]:.2f}" if alone else "", f"{busy[0]:.2f}" if busy else "",
                 " / ".join(f"{v:.2f}" for v in pair) if pair else "",
                 f"{r[f'pair_vs_alone_{p}']:.2f}x" if f"pair_vs_alone_{p}" in r else "",
                 f"{prep[0]:.2f}, {prep[1]:.3f}" if prep else ""]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if prep_rate is not None:
        lines += ["", f"The prep alone (`medsr prep hcp --workers N`, {PREP_SUBJECTS} generated subjects per pass): "
                      f"{prep_rate:.3f} subjects/s; a training beside it runs for {PREP_WINDOW_PASSES} of its passes alone (at "
                      "least the seconds above), and the prep's passes wholly inside that window count."]
    lines += ["", "Targets (the slower training of a pair counts):", ""]
    checks = [
        ("auto beside a busy core / best fixed count there", r.get("auto_vs_best_busy"), TARGET_AUTO_BUSY),
        ("auto alone / best fixed count alone", r.get("auto_vs_best_alone"), TARGET_AUTO_IDLE),
        ("auto, two trainings: each / alone", r.get("pair_vs_alone_auto"), TARGET_PAIR),
        ("auto beside a prep: training / alone", r.get("prep_train_vs_alone_auto"), TARGET_PAIR),
        ("a prep beside an auto training: prep / prep alone", r.get("prep_vs_alone_auto"), TARGET_PAIR),
    ]
    for text, value, target in checks:
        if value is not None:
            lines.append(f"- {text}: **{value:.3f}x** (target >= {target:g}: {'met' if value >= target - 1e-9 else 'missed'})")
    printed = [(label, line) for label, got in (said or {}).items() for line in got]
    if printed:
        lines += ["", "What the trainings printed (`medsr train: ...`):", ""]
        lines += [f"- {label}: `{line}`" for label, line in printed]
    return "\n".join(lines) + "\n"


def _shown_path(path: str) -> str:
    """``path`` relative to the repository when inside it (no machine's own folders in the report)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def _machine() -> str:
    import platform

    from medsr.utils.threads import cgroup_cpu_limit, usable_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    quota = cgroup_cpu_limit()
    return (f"{usable_cores()} usable CPU core(s) ({cpu}{f', cgroup quota {quota:g} CPUs' if quota else ''}), "
            f"Python {platform.python_version()}")


def run(args: argparse.Namespace) -> int:
    if args.worker:
        return worker()
    if args.config is None:
        args.config = str(ROOT / "configs" / "demo.yaml")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"{args.config}: config not found")
    from medsr.utils.threads import usable_cores

    cores = usable_cores()
    policies = args.policies or list(dict.fromkeys(["auto", "1", str(cores)]))
    for p in policies:
        parse_policy(p)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds:g}")
    work = Path(tempfile.mkdtemp(prefix="medsr-busy-")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # other processes' load: what the machine was doing meanwhile
    workers: dict[tuple[bool, int], Worker] = {}
    try:
        from medsr.data.synthetic import make_prepared_dataset

        shape = tuple(args.shape)
        manifest = make_prepared_dataset(work / "data", args.n_subjects, shape, "dti", patch_size=16)
        situations = [s for s in SITUATIONS if s in args.situations]
        prep_rate = None
        if "prep" in situations:
            from data_prep.phantom import PhantomConfig, generate

            generate(work / "raw", PREP_SUBJECTS, config=PhantomConfig(shape=shape), progress=False)
            print("prep alone ...", end=" ", file=sys.stderr, flush=True)
            prep_rate = prep_alone(work, args.seconds)
            print(f"{prep_rate:.3f} subjects/s", file=sys.stderr)
        results: dict[str, dict[str, list[float]]] = {s: {} for s in situations}
        said: dict[str, list[str]] = {}  # "situation, threads P" -> what its trainings printed
        total = len(situations) * len(policies) * args.repeats
        done = 0
        for situation in situations:
            runs: dict[str, list[list[float]]] = {p: [] for p in policies}
            for _ in range(args.repeats):
                for policy in policies:
                    done += 1
                    print(f"[{done}/{total}] {situation}, threads {policy} ...", end=" ", file=sys.stderr, flush=True)
                    lines = said.setdefault(f"{situation}, threads {policy}", [])
                    seconds = max(args.seconds, PREP_WINDOW_PASSES * PREP_SUBJECTS / prep_rate) if situation == "prep" \
                        and prep_rate else args.seconds
                    runs[policy].append(run_situation(situation, policy, args, manifest, work, workers, lines, seconds))
                    print(" / ".join(f"{v:.2f}" for v in runs[policy][-1]) + " steps/s", file=sys.stderr)
            for policy, got in runs.items():  # per training of the situation: the median over repeats
                results[situation][policy] = [statistics.median(r[i] for r in got) for i in range(len(got[0]))]
    finally:
        for w in workers.values():
            w.close()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    import torch

    meta = {
        "machine": f"{_machine()}, torch {torch.__version__}; 1-minute load average {load_before:.1f} before the "
                   f"run, {os.getloadavg()[0]:.1f} after (this benchmark's own processes included)",
        "config": _shown_path(args.config),
        "data": f"{args.n_subjects} generated DTI subjects of {'x'.join(map(str, shape))} voxels",
        "seconds": f"{args.seconds:g}" + (f" (median of {args.repeats} runs)" if args.repeats > 1 else ""),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (medsr's default)")
                       + (f", GOMP_SPINCOUNT {os.environ['GOMP_SPINCOUNT']}" if "GOMP_SPINCOUNT" in os.environ else ""),
    }
    command = "medsr bench busy" + "".join(
        f" {flag} {value}" for flag, value in (
            ("--config", _shown_path(args.config) if _shown_path(args.config) != "configs/demo.yaml" else None),
            ("--policies", " ".join(args.policies) if args.policies else None),
            ("--situations", " ".join(args.situations) if len(args.situations) < len(SITUATIONS) else None),
            ("--seconds", f"{args.seconds:g}" if args.seconds != 20.0 else None),
            ("--repeats", str(args.repeats) if args.repeats != 1 else None),
            ("--set", " ".join(args.overrides) if args.overrides else None),
            ("--output", str(args.output) if args.output else None)) if value)
    text = render(results, meta, command, args.note, said, prep_rate)
    print(text)
    if args.output is not None:
        from medsr.utils.atomic import atomic_path

        args.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.output) as tmp:
            tmp.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # the training workers: python benchmarks/busy.py --worker
    _parser = argparse.ArgumentParser()
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
