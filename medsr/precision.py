"""Mixed precision: the names a user types (``fp32``, ``bf16``, ``fp16``), autocast, fp16 gradient scaling.

``train.precision`` and ``medsr infer --precision`` take one of :data:`PRECISIONS`:

* ``fp32``: plain float32 (no autocast): bit-exact resume, the reference.
* ``bf16``: ``torch.autocast`` with bfloat16 on the training device. Convolutions run in bf16, losses
  and reductions in float32 (autocast's own lists), weights and optimiser state stay float32, and the
  reversible core keeps its coupling sums (the residual stream) in float32 so its inverse stays
  accurate (:mod:`medsr.networks.reversible`). bf16 has float32's exponent range: no loss scaling.
* ``fp16``: autocast with float16 plus one ``GradScaler`` per optimiser (float16's range is narrow:
  small gradients would flush to zero unscaled; a step whose gradients overflow is skipped and the
  scale lowered). CUDA only: refused elsewhere with a one-line reason.

Outputs handed to users (inference volumes, logged losses, checkpoints) are always float32.
"""
from __future__ import annotations

import contextlib
import typing
from typing import Any, ContextManager, Iterable

import torch

from medsr.choices import Precision

PRECISIONS: tuple[str, ...] = typing.get_args(Precision)  # one list: the config field's
_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str, what: str = "precision") -> str:
    """Return ``precision`` when ``device`` can run it, else raise a one-line ValueError naming ``what``.

    Args:
        precision: ``fp32``, ``bf16`` or ``fp16``.
        device: where the networks run (``cuda:N``, ``cpu``, ...).
        what: how the user spelt the setting (``config key 'train.precision':`` or ``--precision``).
    """
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"{what} {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"{what} fp16 needs a CUDA device, but this run is on {dev.type} (float16 there has no fast "
                         "kernels and its narrow range needs loss scaling); use bf16 or fp32")
    if precision == "bf16":
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{what} bf16: this GPU ({torch.cuda.get_device_name(dev)}) has no bfloat16 support; "
                             "use fp16 or fp32")
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"{what} bf16: autocast on {dev.type} is not supported here; use fp32")
    return precision


def autocast(precision: str, device: torch.device | str) -> ContextManager[Any]:
    """The autocast context of ``precision`` on ``device`` (a no-op for ``fp32``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


class MixedPrecision:
    """Autocast and (fp16) gradient scaling for the optimisers of one training run.

    Args:
        precision: ``fp32``, ``bf16`` or ``fp16`` (checked against ``device``).
        device: the training device.
        optimizers: names of the optimisers that :meth:`backward_step` will step (one scaler each
            under fp16: the generator's and discriminators' steps are separate, so each keeps its own
            scale and a skipped step of one never skips the other).
    """

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu",
                 optimizers: Iterable[str] = ("G",), what: str = "config key 'train.precision':") -> None:
        self.precision = check_precision(precision, device, what)
        self.device = torch.device(device)
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        if precision == "fp16":
            self.scalers = {n: torch.amp.GradScaler(self.device.type) for n in optimizers}

    def autocast(self) -> ContextManager[Any]:
        """Forward passes and losses run inside this; ``backward`` outside it."""
        return autocast(self.precision, self.device)

    def backward_step(self, name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate ``loss`` (a scalar) and step ``optimizer`` (scaled for fp16).

        Under fp16 a step whose gradients hold inf/NaN is skipped and the scale halved, as
        ``torch.amp.GradScaler`` does; fp32 and bf16 step plainly (identical to no mixed precision).
        """
        scaler = self.scalers.get(name)
        if scaler is None:
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """``{"precision", "scalers": {name: GradScaler state}}`` as plain containers (weights_only-safe)."""
        return {"precision": self.precision, "scalers": {n: s.state_dict() for n, s in self.scalers.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the scalers' scales; a checkpoint of another precision leaves fresh scalers."""
        saved = (state or {}).get("scalers", {}) or {}
        for n, s in self.scalers.items():
            if n in saved and saved[n]:
                s.load_state_dict(saved[n])
