"""medsr: 3D medical image super-resolution with memory-efficient reversible networks.

The library is the ground floor: it never imports ``pipelines`` or ``data_prep``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from medsr.volume import Volume  # noqa: E402

__all__ = ["Volume", "__version__"]
