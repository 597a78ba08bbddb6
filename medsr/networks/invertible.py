"""Check that a module with ``forward`` and ``inverse`` really inverts (memcnn's ``is_invertible_module``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def inversion_error(
    module: nn.Module,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> float:
    """Largest of ``max|inverse(forward(x)) - x|`` and ``max|forward(inverse(y)) - y|`` on random input.

    Args:
        module: has ``forward(x)`` and ``inverse(y)``.
        shape: input shape, e.g. (B, C, X, Y, Z).
        dtype, device: of the random test input (the module must already live there).
        seed: of the random generator (the global RNG is left untouched).
    """
    if not callable(getattr(module, "inverse", None)):
        raise ValueError(f"{type(module).__name__} has no inverse() method")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    y = torch.randn(tuple(shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    e1 = (module.inverse(module(x)) - x).abs().max().item()
    e2 = (module(module.inverse(y)) - y).abs().max().item()
    return float(max(e1, e2))


def is_invertible(
    module: nn.Module,
    shape: Sequence[int],
    atol: float = 1e-5,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> bool:
    """True when ``module.inverse`` undoes ``module.forward`` (and vice versa) within ``atol``.

    Args:
        module: has ``forward(x)`` and ``inverse(y)``, e.g. a reversible core.
        shape: input shape, e.g. (B, C, X, Y, Z) or (B, C, H, W).
        atol: largest allowed absolute error.
    """
    return inversion_error(module, shape, dtype=dtype, device=device, seed=seed) <= atol
