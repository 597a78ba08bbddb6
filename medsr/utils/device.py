"""Device names a user types (``--device``, ``train.device``) checked before any work starts."""
from __future__ import annotations


def check_device(request: str | None, what: str = "--device") -> str:
    """Return ``request`` when it names a usable device, else raise a one-line ValueError naming ``what``.

    Accepts ``auto`` (or None / empty), ``cpu``, ``cuda``, ``cuda:N`` and any other device type torch
    parses (``mps``); ``cuda`` needs CUDA, and ``cuda:N`` a GPU with that index.
    """
    import torch

    if request in (None, "", "auto"):
        return "auto"
    try:
        dev = torch.device(request)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{what} {request!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {request!r}: CUDA is not available on this machine; use cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{what} {request!r}: no such GPU; this machine has {n} (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{what} {request!r}: MPS is not available on this machine; use cpu or auto")
    elif dev.type != "cpu":
        raise ValueError(f"{what} {request!r}: unsupported device type {dev.type!r}; use auto, cpu, cuda or cuda:N")
    return request
