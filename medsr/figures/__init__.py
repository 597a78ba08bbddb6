"""Figures of medsr (PNG via matplotlib): one implementation behind ``demo``, ``evaluate --figures`` and ``report``.

* :func:`subject_figures`: per subject, LR input / truth / each method and their signed errors, for
  MD, FA and colour FA (DTI) or intensity (scalar) (:mod:`medsr.figures.subject`; :func:`draw_subject`
  gives the same Figures unwritten);
* :func:`tensor_components_figure`: the six tensor components side by side (:mod:`medsr.figures.tensors`);
* :func:`labels_figure`: a phantom's b0, MD, FA and tissue labels with a legend (:mod:`medsr.figures.phantom`);
* :func:`preview_figure`: the training preview ``samples/*.png`` (:mod:`medsr.figures.preview`).

How quantities, units and windows are chosen: :mod:`medsr.figures.maps`.
"""
from __future__ import annotations

from medsr.figures.maps import describe, figure_kind, quantities
from medsr.figures.subject import BASELINE_ORDER, column_order, draw_subject, figure_paths, subject_figures

__all__ = ["BASELINE_ORDER", "column_order", "describe", "draw_subject", "figure_kind", "figure_paths",
           "quantities", "subject_figures"]
