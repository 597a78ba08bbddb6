"""Command-line flags agree across commands: every --help shows defaults; old spellings are refused."""
from __future__ import annotations

import argparse

import pytest

from pipelines.bench_cli import BENCHES, bench_parser
from pipelines.cli import VERBS, HelpFormatter, main, verb_parser


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for verb in VERBS:
        parser = verb_parser(verb)
        out.append((verb, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"{verb} {name}", sub) for name, sub in action.choices.items()]
    return out + [(f"bench {name}", bench_parser(name)) for name in BENCHES]


@pytest.mark.parametrize("name, parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_help_shows_the_defaults(name, parser):
    assert parser.formatter_class is HelpFormatter, name
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default in (None, False, [], argparse.SUPPRESS):
            continue
        text = formatter._get_help_string(action)
        assert "default" in text.lower(), f"medsr {name} {action.option_strings[0]}: {text!r}"
    parser.format_help()  # renders (a stray % in a help text would raise here)


def test_infer_help_names_only_its_own_flags():
    """Every ``--flag`` in ``medsr infer --help`` (option helps, the grid/threads/windows notes, the
    examples: all infer command lines) is one of infer's options."""
    import re

    parser = verb_parser("infer")
    own = {s for action in parser._actions for s in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", parser.format_help()))
    assert named and named <= own, f"medsr infer --help names {sorted(named - own)}, which it does not have"


def test_help_imports_no_heavy_library():
    """``medsr --help`` and every verb's ``--help`` start fast: no torch, MONAI, dipy, pandas or matplotlib
    (the lazy imports pipelines/cli.py's docstring describes)."""
    import subprocess
    import sys

    code = ("import sys\nfrom pipelines.cli import VERBS, verb_parser\n"
            "for v in VERBS: verb_parser(v).format_help()\n"
            "print(' '.join(m for m in ('torch', 'monai', 'dipy', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_demo_counts_subjects_with_n_subjects(capsys):
    args = verb_parser("demo").parse_args(["--n-subjects", "3"])
    assert args.n_subjects == 3 and args.subjects is None
    with pytest.raises(SystemExit) as e:
        main(["demo", "--subjects", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medsr demo: error: --subjects") and "--n-subjects N" in err


@pytest.mark.parametrize("bench", ["infer", "precision"])
def test_bench_shapes_are_three_integers(bench, capsys):
    assert bench_parser(bench).parse_args(["--shape", "8", "10", "12"]).shape == [8, 10, 12]
    with pytest.raises(SystemExit) as e:
        bench_parser(bench).parse_args(["--shape", "8,10,12"])
    assert e.value.code == 2
    assert "give the sizes space-separated, e.g. --shape 8 10 12" in capsys.readouterr().err
    for bad, hint in ((["8", "10"], "three positive sizes"), (["8", "x", "2"], "integers")):
        with pytest.raises(SystemExit):
            bench_parser(bench).parse_args(["--shape", *bad])
        assert hint in capsys.readouterr().err


def test_bench_prep_takes_shape_and_volumes(capsys):
    args = bench_parser("prep").parse_args(["--shape", "12", "14", "12", "--volumes", "40"])
    assert (args.shape, args.volumes) == ([12, 14, 12], 40)
    with pytest.raises(SystemExit):
        bench_parser("prep").parse_args(["--size", "12,14,12,40"])
    assert "--size X,Y,Z,N is now --shape 12 14 12 --volumes 40" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["evaluate", "evaluate2d"])
def test_outputs_are_named_output(verb, capsys):
    """What a command writes is --output everywhere; evaluate's old --csv stops with the new spelling."""
    argv = ["--checkpoint", "ck.pt", "--data", "d"] if verb == "evaluate2d" else []
    assert str(verb_parser(verb).parse_args(argv + ["--output", "res.csv"]).csv) == "res.csv"
    with pytest.raises(SystemExit) as e:
        main([verb, *argv, "--csv", "res.csv"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"medsr {verb}: error: --csv is now --output (as in every command that writes a file)"


def test_bench_loader_counts_subjects_with_n_subjects(capsys):
    assert bench_parser("loader").parse_args(["--n-subjects", "5"]).n_subjects == 5
    with pytest.raises(SystemExit) as e:
        main(["bench", "loader", "--subjects", "5"])
    assert e.value.code == 2
    assert "--subjects is now --n-subjects N" in capsys.readouterr().err.strip().splitlines()[-1]
