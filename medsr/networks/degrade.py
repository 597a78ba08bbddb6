"""Prep's degradation as a differentiable op on patches: the ``D`` of a consistency loss ``|D(F(x)) - x_lr|``.

``medsr prep`` makes each LR voxel from its HR block with :func:`medsr.degrade.degrade_array`: the block
mean on every axis (``box``), or the block mean in plane and a slice profile through plane
(``gaussian``: :mod:`medsr.slice_profile`). :class:`Degradation` computes the same numbers on a batch of
HR-grid patches that start on an LR block boundary, with gradients:

* ``box``: ``avg_pool3d`` with kernel and stride = the per-axis factor; exactly the block mean.
* ``gaussian``: the block mean in plane, then along the slice axis a stride-``r`` convolution whose taps
  are prep's own profile weights (:func:`medsr.slice_profile.profile_weights`) for one slice and its
  :attr:`margin` neighbouring blocks on each side. The Gaussian reaches beyond those (FWHM = one slice:
  a weight of 2e-4 of the total lies beyond one neighbour on each side), so the taps are the profile
  truncated there and renormalised, and the first and last ``margin`` LR slices of a patch, whose profile
  reaches outside the patch, are left out: :meth:`Degradation.crop_lr` cuts an LR patch to the slices
  :meth:`Degradation.forward` returns.

The op is linear with weights summing to one, so it commutes with a per-channel affine normalisation
``(v - mean) / std`` when input and target share the statistics (``data.norm_stats: shared``).

Diffusion tensors: prep averages the *DWIs* over each block and fits the LR tensor to the averaged
signal, inside the LR mask. Outside the brain the DWIs carry (almost) no signal, so a block half outside
the brain keeps the brain's tensor instead of half of it; inside, the fit of the averaged signal is close
to the mean of the tensors. :meth:`Degradation.brain_mean` is that model: the mean over each block's
brain voxels (:func:`medsr.degrade.block_mean_array` of ``mask * tensors`` over that of ``mask``), and
tests/test_gan_modes.py measures it against prep's own fit of degraded DWIs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.factor import factor_triple

PROFILES: tuple[str, ...] = ("box", "gaussian")


class Degradation(nn.Module):
    """HR-grid patches (B, C, X, Y, Z) -> their LR voxels (B, C, X/rx, Y/ry, Z/rz - 2 * margin on the slice axis).

    Args:
        factor: the data's factor (an int or one per axis).
        profile: ``box`` or ``gaussian`` (the data's slice profile, as prepared).
        margin: LR slices of each side whose profile is cut off (``gaussian`` only; ``box`` has none).

    Attributes:
        factor: (rx, ry, rz).
        axis: the slice axis (0, 1, 2) of a ``gaussian`` profile; None for ``box``.
    """

    def __init__(self, factor: int | Sequence[int], profile: str = "box", margin: int = 1) -> None:
        super().__init__()
        if profile not in PROFILES:
            raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        self.factor = factor_triple(factor)
        self.profile = profile
        self.axis: int | None = None
        self.margin = 0
        if profile == "gaussian":
            from medsr.slice_profile import profile_weights, slice_axis

            self.axis = slice_axis(self.factor)
            self.margin = int(margin)
            r = self.factor[self.axis]
            n = 2 * self.margin + 1
            taps = torch.as_tensor(profile_weights(n * r, r, profile)[self.margin], dtype=torch.float32)
            self.register_buffer("taps", taps / taps.sum(), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) with sizes multiples of the factor -> (B, C, x, y, z) LR voxels (slice axis cropped)."""
        r = self.factor
        if any(s % f for s, f in zip(y.shape[2:], r)):
            raise ValueError(f"patch size {tuple(y.shape[2:])} is not a multiple of the factor {r}")
        if self.axis is None:
            return F.avg_pool3d(y, r) if r != (1, 1, 1) else y
        a = self.axis
        plane = tuple(1 if i == a else f for i, f in enumerate(r))
        y = F.avg_pool3d(y, plane) if plane != (1, 1, 1) else y
        n_lr = y.shape[2 + a] // r[a]
        if n_lr <= 2 * self.margin:
            raise ValueError(f"a patch of {y.shape[2 + a] } voxels along the slice axis holds no LR slice whose "
                             f"profile lies inside it; use patches of at least {(2 * self.margin + 1) * r[a]}")
        kernel = [1, 1, 1]
        kernel[a] = self.taps.numel()
        stride = [1, 1, 1]
        stride[a] = r[a]
        b, c = y.shape[:2]
        w = self.taps.to(y.dtype).reshape(1, 1, *kernel)
        out = F.conv3d(y.reshape(b * c, 1, *y.shape[2:]), w, stride=stride)
        return out.reshape(b, c, *out.shape[2:])

    def crop_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """An LR patch (B, C, x, y, z) cut to the slices :meth:`forward` returns."""
        if self.axis is None or self.margin == 0:
            return lr
        n = lr.shape[2 + self.axis]
        return lr.narrow(2 + self.axis, self.margin, n - 2 * self.margin)

    def crop_hr(self, hr: torch.Tensor) -> torch.Tensor:
        """An HR-grid patch cut to the blocks of :meth:`forward`'s slices (e.g. a brain mask to average)."""
        if self.axis is None or self.margin == 0:
            return hr
        m = self.margin * self.factor[self.axis]
        return hr.narrow(2 + self.axis, m, hr.shape[2 + self.axis] - 2 * m)

    def brain_mean(self, hr: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D over each block's brain voxels (B, C, x, y, z), the blocks' brain fraction (B, 1, x, y, z)).

        ``D(mask * hr) / D(mask)`` where a block holds brain, 0 where it holds none: the LR value of a
        quantity that is fitted to the signal the brain gives (DTI), not averaged with the background.
        """
        mask = mask.to(hr.dtype)
        fraction = self(mask)
        return self(hr * mask) / fraction.clamp_min(1e-6) * (fraction > 0), fraction

    def block_fraction(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) mask -> the brain fraction of each LR voxel's block (B, 1, x, y, z), cropped as forward."""
        return F.avg_pool3d(self.crop_hr(mask), self.factor) if self.factor != (1, 1, 1) else mask

