"""The ``medsr`` command: one verb per pipeline, each with its own ``--help``.

Verbs are imported lazily so ``medsr --help`` and ``medsr prep --help`` do not pay for
importing torch. Each verb module defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # the exit code

Errors a user can fix (bad files, bad configs) are raised as :class:`UserError`, ``ValueError``,
``FileNotFoundError`` or ``FileExistsError`` and printed as one line, with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help). Nested verbs (prep hcp) are handled by the module itself.
VERBS: dict[str, tuple[str, str]] = {
    "prep": ("pipelines.prep_cli", "prepare HCP subjects or generic volumes into HR/LR training pairs"),
    "train": ("pipelines.train_cli", "train a model from a YAML config (works under torchrun)"),
    "infer": ("pipelines.infer_cli", "upsample volumes with a trained checkpoint, writing NIfTI"),
    "evaluate": ("pipelines.evaluate_cli", "RMSE interior/total, PSNR, SSIM (+MD/FA) against baselines, to CSV"),
    "report": ("pipelines.report_cli", "PNG figures of slices, predictions, error and MD maps"),
    "evaluate2d": ("pipelines.evaluate2d_cli", "evaluate a 2D Maps / Cityscapes checkpoint, to CSV"),
    "bench": ("pipelines.bench_cli", "benchmarks: memory vs depth, loader, inference, prep"),
    "demo": ("pipelines.demo_cli", "end-to-end demo on a generated DTI brain phantom"),
}


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback."""


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsr",
        description="3D medical image super-resolution with memory-efficient reversible networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {v:<11} {h}" for v, (_, h) in VERBS.items())
        + "\n\nRun 'medsr VERB --help' for the options of a verb.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("verb", nargs="?", choices=list(VERBS), metavar="VERB", help="one of: " + ", ".join(VERBS))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        from medsr import __version__

        print(f"medsr {__version__}")
        return 0
    verb = argv[0]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    module_name, help_line = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"medsr {verb}", description=help_line)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        # The one-line contract is kept here, whatever a library put in the message.
        msg = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
        print(f"medsr {verb}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medsr {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
