"""The ``medsr`` command: one verb per pipeline, each with its own ``--help``.

Verbs are imported lazily so ``medsr --help`` and ``medsr prep --help`` do not pay for
importing torch. Where imports live in ``pipelines/``: at the top of each module, except where
start-up time of ``--help`` needs them inside functions. That is, the modules a verb's ``--help``
loads (this one, the verb modules ``*_cli.py``, and ``demo.py``, whose defaults ``demo --help``
shows) import torch, MONAI, dipy, nibabel, pandas, matplotlib, SciPy and the ``medsr`` /
``data_prep`` / ``pipelines`` modules that pull them in only inside ``run`` and the functions it
calls; so do the ``benchmarks/*.py`` modules for the libraries their own ``--help`` does not need. The
orchestration modules that only ``run`` reaches (``train.py``, ``infer.py``, ``evaluate.py``)
import at the top. ``tests/test_cli_flags.py`` checks that no verb's ``--help`` imports torch,
pandas or matplotlib. Each verb module defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # the exit code

Every failure is printed as one line, ``medsr VERB: error: ...``, without a traceback; ``--debug``
(anywhere on the command line) or ``MEDSR_DEBUG=1`` shows the traceback instead. Exit codes:

* 0: success;
* 1: the run failed on its own terms (a diverged training, failed prep subjects, out of memory, or an
  internal error, which asks for ``--debug``);
* 2: refused input: a bad argument, config key, file or folder (:class:`UserError`, ``ValueError``,
  any ``OSError`` such as a missing file, a permission error or a full disk, with the path named);
* 130: interrupted.

OpenMP threads waiting for work sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, set by :func:`main`
before torch loads unless the user set a policy or ``GOMP_SPINCOUNT``, and inherited by every process a
verb starts): spinning threads beside another busy process made a two-thread training step several
times slower than a one-thread step.

Notes added to an exception (``e.add_note``, e.g. which outputs a batch wrote before it failed)
are appended to its line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from medsr.utils.threads import passive_wait_policy

# verb -> (module, one-line help). Nested verbs (prep hcp) are handled by the module itself.
VERBS: dict[str, tuple[str, str]] = {
    "prep": ("pipelines.prep_cli", "prepare HCP or BIDS diffusion data, or generic volumes, into HR/LR training pairs"),
    "train": ("pipelines.train_cli", "train a model from a YAML config (works under torchrun)"),
    "infer": ("pipelines.infer_cli", "upsample volumes with a trained checkpoint, writing NIfTI"),
    "info": ("pipelines.info_cli", "a checkpoint's model card: training data, steps, time, held-out metrics"),
    "maps": ("pipelines.maps_cli", "FA, MD, colour FA and V1 maps of a diffusion tensor file, as NIfTI"),
    "export": ("pipelines.export_cli", "a checkpoint's generator as a torch.export program that plain PyTorch runs"),
    "evaluate": ("pipelines.evaluate_cli", "RMSE interior/total, PSNR, SSIM (+MD/FA) against baselines, to CSV"),
    "report": ("pipelines.report_cli", "PNG figures of slices, predictions, error and MD maps"),
    "evaluate2d": ("pipelines.evaluate2d_cli", "evaluate a 2D Maps / Cityscapes checkpoint, to CSV"),
    "bench": ("pipelines.bench_cli", "benchmarks: memory vs depth, loader, inference, prep"),
    "demo": ("pipelines.demo_cli", "end-to-end demo on a generated DTI brain phantom"),
}


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help`` (as ``ArgumentDefaultsHelpFormatter``), descriptions and
    epilogs kept as written; a help text that already states its default, or a default of None /
    False (an unset option or an off switch), is left as it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or default == []):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def use_help_formatter(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Set :class:`HelpFormatter` on ``parser`` and on every sub-command parser below it (after the
    verb module has built them, so no module can opt out). Returns ``parser``."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_formatter(sub)
    return parser


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """The argument parser of ``medsr VERB`` (imports that verb's module only)."""
    module_name, help_line = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"medsr {verb}", description=help_line)
    module.add_arguments(parser)
    return use_help_formatter(parser)


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsr",
        description="3D medical image super-resolution with memory-efficient reversible networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {v:<11} {h}" for v, (_, h) in VERBS.items())
        + "\n\nRun 'medsr VERB --help' for the options of a verb.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (anywhere on the line; or set MEDSR_DEBUG=1)")
    p.add_argument("verb", nargs="?", choices=list(VERBS), metavar="VERB", help="one of: " + ", ".join(VERBS))
    return p


def _one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_line(e: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception reaching the command line."""
    code = 2
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.filename is not None:
        # "[Errno 13] Permission denied: 'x'" -> "x: permission denied"
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        msg = f"{where}: {(e.strerror or type(e).__name__).lower()}"
    elif isinstance(e, OSError) and e.errno is not None and e.strerror:
        msg = e.strerror  # no file known here; a writer adds it as a note (see atomic_path)
    else:
        msg = str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        code = 1
        msg = f"out of memory{': ' + msg if msg else ''} (try a smaller --window, batch or patch size)"
    elif not isinstance(e, (UserError, ValueError, OSError)):
        code = 1
        msg = f"internal error {type(e).__name__}: {msg} (rerun with --debug for the traceback)"
    msg = _one_line(msg) or type(e).__name__
    notes = [_one_line(n) for n in getattr(e, "__notes__", []) if _one_line(n)]
    return "; ".join([msg, *notes]), code


def main(argv: list[str] | None = None) -> int:
    # Before any verb imports torch: libgomp reads its wait policy once, when it loads (see the module).
    passive_wait_policy()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MEDSR_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    top = _top_parser()
    if argv and argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if not argv:  # no verb: the help, on stderr, and argparse's exit code for a missing argument
        top.print_help(sys.stderr)
        return 2
    if argv[0] == "--version":
        from medsr import __version__

        print(f"medsr {__version__}")
        return 0
    verb = argv[0]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    module = importlib.import_module(VERBS[verb][0])
    args = verb_parser(verb).parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"medsr {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one-line contract is kept here, whatever was raised
        msg, code = error_line(e)
        if debug:
            traceback.print_exc()
        print(f"medsr {verb}: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
