"""The README's runnable examples run as written, and the command line behaves as the README says.

A shell block of README.md is *runnable* when the line before its fence is ``<!-- runnable -->``. Each
such block runs with ``bash -e`` in a fresh folder holding a link to the clone's ``configs/``, with
``medsr`` and ``python`` on the PATH running this checkout with the interpreter running the tests (so the
test does not depend on how medsr is installed, and a virtual environment stays active: each is a script
that execs ``sys.executable``, which a link to it would not do). Only sizes shrink, never the commands: :data:`SMALL` appends arguments to lines starting
with a prefix (before any trailing comment), so the block stays the real recipe and runs in seconds:

* ``python -m data_prep.phantom``: a 32x36x30 grid with 12 directions (default 56x64x52, 60);
* ``medsr train``: 4 steps, one thread, no progress bar (the recipe's config trains 1500 steps).

After the study block the test checks what the README says it leaves: everything in ``study/``, the
held-out subject's prediction, the metrics CSV, and the same three figures from ``evaluate --figures`` and
``report`` (byte for byte: one implementation draws both); then that the block runs again in the same
folder.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data_prep.phantom import main as phantom_main
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
SMALL: dict[str, str] = {
    "python -m data_prep.phantom": "--shape 32 36 30 --directions 12 --b0 2",
    "medsr train": "train.max_steps=4 train.threads=1 train.progress=false",
}


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the shell blocks marked runnable (indentation of list items removed)."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = lines[j] if j < len(lines) else ""
        if not re.fullmatch(r"\s*```(bash|sh)\s*", fence):
            raise AssertionError(f"README.md:{j + 1}: {MARKER} must precede a ```bash block, found {fence!r}")
        indent = len(fence) - len(fence.lstrip())
        body = []
        for k in range(j + 1, len(lines)):
            if lines[k].strip() == "```":
                break
            body.append(lines[k][indent:])
        else:
            raise AssertionError(f"README.md:{j + 1}: unterminated code block")
        blocks.append("\n".join(body))
    return blocks


def shrink(block: str) -> str:
    """Apply :data:`SMALL` to each command line (continuation lines joined first)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        m = re.search(r"\s#", line)  # a trailing comment: the extra arguments go before it
        code, comment = (line[:m.start()], line[m.start():]) if m else (line, "")
        for prefix, extra in SMALL.items():
            if (code.strip() + " ").startswith(prefix + " "):  # the command itself, not a longer name
                code = f"{code.rstrip()} {extra}"
        out.append(code + comment)
    return "\n".join(out)


def _shims(bin_dir: Path) -> dict[str, str]:
    bin_dir.mkdir()
    # Scripts, not links: an interpreter started through a link elsewhere does not find its venv's pyvenv.cfg.
    for name, args in (("medsr", " -m pipelines.cli"), ("python", "")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{args} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MPLBACKEND="Agg")
    env.pop("MEDSR_DEBUG", None)
    return env


def _run(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-e", "-c", shrink(block)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README block failed ({proc.returncode}):\n{shrink(block)}\n{proc.stderr[-3000:]}"
    return proc


def test_markers_find_the_blocks():
    blocks = runnable_blocks(README.read_text())
    assert any("medsr train" in b and "data.subjects=" in b for b in blocks)  # the study never trains on its test
    assert any("--plan-only" in b for b in blocks)
    assert shrink("medsr train c.yaml --set a=1  # note") == (
        f"medsr train c.yaml --set a=1 {SMALL['medsr train']} # note")


def test_readme_runnable_blocks(tmp_path, monkeypatch):
    """Every runnable block passes; the study leaves what the README promises."""
    env = _shims(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    blocks = runnable_blocks(README.read_text())
    outputs = [_run(b, work, env).stdout for b in blocks]

    # The window plan: the numbers the README quotes next to the command.
    plan = next(o for b, o in zip(blocks, outputs) if "--plan-only" in b)
    text = README.read_text()
    for number in ("145x174x83", "1.14", "2.42", "7.62"):
        assert number in plan and number in text, number
    # The study: the held-out subject only, scored against the baselines, drawn twice the same way.
    block = next((b for b in blocks if "medsr report" in b), None)
    if block is None:
        return
    # Everything the blocks write is in study/ (git ignores it), beside the configs link.
    assert sorted(p.name for p in work.iterdir()) == ["configs", "study"]
    assert "study/" in set((ROOT / ".gitignore").read_text().split())
    out = work / "study"
    assert sorted(p.name for p in (out / "preds").iterdir()) == ["phantom03.nii.gz"]
    df = pd.read_csv(out / "results.csv")
    assert list(dict.fromkeys(df["model"])) == ["preds", "nn", "linear", "cubic"] and set(df["subject"]) == {"phantom03"}
    study = outputs[blocks.index(block)]
    assert "is better than cubic on" in study and "x cubic" in study
    names = ["phantom03_colour_fa.png", "phantom03_fa.png", "phantom03_md.png"]
    assert sorted(p.name for p in (out / "figs").iterdir()) == names
    assert sorted(p.name for p in (out / "report").iterdir()) == names
    for n in names:
        assert (out / "figs" / n).read_bytes() == (out / "report" / n).read_bytes(), n
    # A user reruns the block as it is: it replaces its own outputs. (Its commands run in this process
    # this time, which saves a torch import per line; the first run above went through bash.)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    monkeypatch.chdir(work)
    for line in shrink(block).splitlines():
        args = shlex.split(line, comments=True)
        if args[:1] == ["medsr"]:
            assert main(args[1:]) == 0, line
        else:
            assert args[:3] == ["python", "-m", "data_prep.phantom"], line
            assert phantom_main(args[3:]) == 0, line
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_bare_medsr_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: medsr" in err and "prep" in err and "demo" in err
    assert main(["--help"]) == 0


def test_infer_help_names_the_checkpoint_training_writes(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    out = capsys.readouterr().out
    assert "run/last.pt" in out and "best.pt" not in out


def test_plan_only_with_instance_norm_needs_no_checkpoint(capsys):
    assert main(["bench", "infer", "--plan-only", "--norm", "instance"]) == 0
    out = capsys.readouterr().out
    assert "24x24x24" in out and "refused" in out and "checkpoint" not in out


def test_ci_runs_the_readme_test_command_in_a_venv():
    """``.ci/run`` runs exactly the README's test command, inside a fresh virtual environment."""
    text = README.read_text()
    command = re.search(r"Run the tests:\n\n```bash\n(.+)\n```", text).group(1)
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = lines.index("# --- README test command (keep identical to README.md) ---")
    assert lines[marker + 1:] == [command]
    assert "python3 -m venv" in "\n".join(lines[:marker]) and 'activate"' in "\n".join(lines[:marker])
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines[:marker]  # a failure fails CI
