"""Device names a user types (``--device``, ``train.device``): checked before any work starts, and
resolved to a ``torch.device`` by one rule used by training, inference and 2D evaluation alike.

torch is imported inside the functions: the command line imports this module to check ``--device``
before anything heavy, and ``medsr --help`` must stay fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def resolve_device(request: "str | torch.device | None", what: str = "--device",
                   local_rank: int = 0) -> "torch.device":
    """The ``torch.device`` a checked request names.

    ``auto`` (or None / empty) is ``cuda:local_rank`` when CUDA is available, else the CPU; a bare
    ``cuda`` is ``cuda:local_rank`` too, so each DDP rank gets its own GPU; anything else is taken as
    given after :func:`check_device`.

    Args:
        request: a device name (or a ``torch.device``, returned as is).
        what: the flag or config key named in an error (``--device``, ``config key 'train.device':``).
        local_rank: this process's GPU on its node (torchrun's ``LOCAL_RANK``; 0 for one process).

    Raises:
        ValueError: one line naming ``what`` when the device is unknown or absent on this machine.
    """
    import torch

    if isinstance(request, torch.device):
        return request
    name = check_device(request, what)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{int(local_rank)}"
    return torch.device(name)
