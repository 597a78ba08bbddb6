"""Through-plane slice profiles: how a 2D multi-slice acquisition weights the HR signal into each thick slice.

A thick slice of a 2D multi-slice scan is excited by an RF pulse whose profile is smooth, not a
box: each LR slice sees the tissue around its centre with a bell-shaped weight that reaches into
its neighbours (slice cross-talk). A 3D acquisition (or an isotropic research protocol averaged
down) is closer to a box. medsr models both:

* ``box``: every axis is block-averaged (:func:`medsr.degrade.block_mean_array`, the IQT protocol);
* ``gaussian``: the in-plane axes are block-averaged and the through-plane axis (the one with the
  largest factor, :func:`slice_axis`) is weighted by a Gaussian of FWHM = slice thickness (= ``r``
  HR voxels: contiguous slices), centred at each LR slice's centre, which is the HR block centre
  ``c_k = k * r + (r - 1) / 2`` of the shared geometry (:mod:`medsr.degrade`).

The HR signal is taken as constant over each HR voxel (an interval of width 1 around its index), so
HR voxel ``i`` contributes to LR slice ``k`` with the profile's integral over that interval::

    w[k, i] = Phi((i + 1/2 - c_k) / sigma) - Phi((i - 1/2 - c_k) / sigma),   sigma = r / (2 sqrt(2 ln 2))

Beyond the volume the signal is extended by its edge slice (the convention of every interpolation in
medsr), so the profile's mass outside the grid goes to the first / last slice and each row sums to 1
(a constant stays constant). The box profile in this form gives weight ``1/r`` to the block's own
voxels: exactly the block mean.
"""
from __future__ import annotations

import math

import numpy as np

from medsr.factor import FactorLike, factor_triple

PROFILES: tuple[str, ...] = ("box", "gaussian")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def slice_axis(factor: FactorLike) -> int:
    """The through-plane axis: the one with the largest factor, which must be the only one that large.

    Raises:
        ValueError: no single axis is thicker than the others (e.g. ``2 2 2``): the data have no slice direction.
    """
    r = factor_triple(factor)
    top = max(r)
    if top == 1 or r.count(top) != 1:
        raise ValueError(f"the gaussian slice profile needs one through-plane axis with the largest factor "
                         f"(e.g. --factor 1 1 4 or 2 2 4); factor {' '.join(map(str, r))} has none")
    return r.index(top)


def _cdf(t: np.ndarray, profile: str, r: int) -> np.ndarray:
    """The profile's cumulative weight at offset ``t`` (HR voxels) from the slice centre."""
    if profile == "box":
        return np.clip(t / r + 0.5, 0.0, 1.0)
    from scipy.special import ndtr  # the standard normal CDF

    return ndtr(t / (r * FWHM_TO_SIGMA))


def profile_weights(n_hr: int, factor: int, profile: str = "gaussian") -> np.ndarray:
    """(n_hr / r, n_hr) float64 weights of HR voxels 0..n_hr-1 in each LR slice (rows sum to 1).

    Args:
        n_hr: HR voxels along the axis (a multiple of ``factor``).
        factor: r along this axis.
        profile: ``box`` or ``gaussian`` (see the module docstring).
    """
    if profile not in PROFILES:
        raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    r = int(factor)
    if n_hr % r:
        raise ValueError(f"{n_hr} voxels are not a multiple of the factor {r}")
    centres = np.arange(n_hr // r, dtype=np.float64) * r + (r - 1) / 2.0
    edges = np.arange(n_hr + 1, dtype=np.float64) - 0.5  # HR voxel i spans [i - 1/2, i + 1/2]
    cdf = _cdf(edges[None, :] - centres[:, None], profile, r)  # (n_lr, n_hr + 1)
    w = np.diff(cdf, axis=1)
    w[:, 0] += cdf[:, 0]  # mass below the grid: the edge slice stands in for the signal beyond it
    w[:, -1] += 1.0 - cdf[:, -1]
    return w


def apply_weights(data: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Weight spatial ``axis`` (0, 1, 2) of (..., X, Y, Z) with ``weights`` (n_lr, n_hr): (..., n_lr along axis) float32.

    One leading index at a time, so a DWI series never exists in float64 as a whole.
    """
    lead = data.shape[:-3]
    flat = data.reshape((-1,) + data.shape[-3:])
    shape = list(data.shape[-3:])
    shape[axis] = weights.shape[0]
    out = np.empty((flat.shape[0], *shape), dtype=np.float32)
    for c in range(flat.shape[0]):
        thick = np.tensordot(weights, flat[c].astype(np.float64), axes=([1], [axis]))  # the slice axis first
        out[c] = np.moveaxis(thick, 0, axis)
    return out.reshape(lead + tuple(shape))
