"""Old spellings of command-line flags, refused with a one-line hint naming the new one.

Flags mean one thing in every command: what a command writes is ``--output``, subject IDs are
``--subjects`` and counts ``--n-subjects``. A renamed flag stays known to argparse, hidden from
``--help``, so a user's old command line stops at once with the new spelling instead of an
"unrecognized arguments" error.
"""
from __future__ import annotations

import argparse


def refuse_renamed(parser: argparse.ArgumentParser, old: str, new: str, why: str = "") -> None:
    """Register ``old`` on ``parser`` so that using it fails with ``"old is now new"`` (exit 2)."""

    class _Renamed(argparse.Action):
        def __call__(self, p, namespace, values, option_string=None) -> None:
            p.error(f"{old} is now {new}" + (f" ({why})" if why else ""))

    parser.add_argument(old, nargs="*", action=_Renamed, help=argparse.SUPPRESS)
