"""Image-quality metrics for the 2D Maps experiments: MAE, PSNR and SSIM on the 0-255 scale.

The paper (Table 4) reports MAE, PSNR and SSIM on 8-bit images, so every function here takes
images already mapped back to 0-255 (see :func:`to_uint8_range`) as float arrays of shape
``(H, W, C)`` or ``(H, W)``. Values are computed per image; the caller averages over a test set.

SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
dynamic range L = 255, computed per channel and averaged over channels. The border where the
window does not fit is excluded from the mean, as scikit-image does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from medsr.metrics import ssim_map

__all__ = ["mae", "psnr", "ssim", "to_uint8_range"]

_L = 255.0


def to_uint8_range(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map a network image in [-1, 1] to float64 0-255, quantised like a saved 8-bit image.

    Args:
        x: ``(C, H, W)`` tensor or array in [-1, 1] (values outside are clipped).

    Returns:
        ``(H, W, C)`` float64 array of integers in 0..255.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {x.shape}")
    # Round as a PNG writer would, so scores match images written to disk.
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).transpose(1, 2, 0)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    return a, b


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error over all pixels and channels, in grey levels (0-255)."""
    a, b = _check_pair(a, b)
    return float(np.mean(np.abs(a - b)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with peak 255; ``math.inf`` for identical images."""
    a, b = _check_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_L * _L / mse)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity (Gaussian window), mean over the valid interior and over channels.

    Args:
        a, b: ``(H, W)`` or ``(H, W, C)`` images on 0-255.
        sigma: Gaussian window width; 1.5 with truncation at 3.5 sigma gives the 11x11 window.

    Returns:
        SSIM in [-1, 1]; exactly 1.0 for identical images.
    """
    a, b = _check_pair(a, b)
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    if min(a.shape[:2]) <= 2 * radius:
        raise ValueError(f"image {a.shape[:2]} too small for an SSIM window of {2 * radius + 1} px")
    scores = []
    for ch in range(a.shape[2]):
        s = ssim_map(a[..., ch], b[..., ch], _L, sigma=sigma, truncate=truncate)
        scores.append(float(s[radius:-radius, radius:-radius].mean()))
    return float(np.mean(scores))
