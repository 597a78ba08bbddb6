"""A DTI brain phantom written as HCP subjects, so the whole toolkit runs with no download.

Each subject is a procedurally generated head on an HCP-like 1.25 mm grid: folded cortex with sulcal
CSF, deep structures, fibre bundles with real crossings, partial volume, an oblique grid and Rician
noise. The model, its ground truth, frames and layout on disk are described in ``docs/phantom.md``.

One concept per module: :mod:`.config` (settings, result type, tissue constants), :mod:`.acquisition`
(gradient scheme, oblique grid, head pose), :mod:`.fields` and :mod:`.tensors` (small maths),
:mod:`.cortex`, :mod:`.deep` and :mod:`.bundles` (anatomy), :mod:`.signal` (diffusion signal and
noise), :mod:`.subject` (one subject), :mod:`.writing` (HCP / BIDS files) and :mod:`.cli`.

Use it from Python with :func:`make_subject` / :func:`generate`, or from the shell with
``python -m data_prep.phantom --output DIR --n-subjects N [--layout bids]``.
"""
from __future__ import annotations

from data_prep.phantom.acquisition import gradient_scheme, oblique_affine
from data_prep.phantom.cli import build_parser, main
from data_prep.phantom.config import (BRAIN_TISSUES, FA_BACKGROUND, LABELS, MD, S0_REL, TRACT_FA_RANGE, Phantom,
                                      PhantomConfig)
from data_prep.phantom.subject import make_subject
from data_prep.phantom.tensors import fa_md
from data_prep.phantom.writing import generate, subject_names, write_bids_subject, write_hcp_subject

__all__ = [
    "BRAIN_TISSUES", "FA_BACKGROUND", "LABELS", "MD", "S0_REL", "TRACT_FA_RANGE", "Phantom", "PhantomConfig",
    "build_parser", "fa_md", "generate", "gradient_scheme", "main", "make_subject", "oblique_affine",
    "subject_names", "write_bids_subject", "write_hcp_subject",
]
