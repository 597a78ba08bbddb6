"""Layer factories keyed on ``spatial_dims`` (2 or 3), so one code path builds 2D and 3D networks.

In the MONAI style, constructors take ``spatial_dims`` and pick ``Conv2d``/``Conv3d``,
``InstanceNorm2d``/``InstanceNorm3d`` and so on. Weights start from N(0, 0.02) as in the
RevGAN / CycleGAN code (:func:`init_weights`); a convolution flagged with :func:`zero_init`
starts at exactly zero instead (used for the last convolution of each reversible branch, so
every block starts as the identity).
"""
from __future__ import annotations

from typing import Literal

import torch.nn as nn

Norm = Literal["none", "instance", "batch"]
PaddingMode = Literal["zeros", "reflect", "replicate"]

NORMS: tuple[str, ...] = ("none", "instance", "batch")
PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate")

_ZERO_INIT_FLAG = "_medsr_zero_init"


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    padding_mode: str = "zeros",
    bias: bool = True,
) -> nn.Module:
    """A ``Conv{2,3}d``; ``padding=None`` means "same" padding ``kernel_size // 2`` for stride 1.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channel counts.
        kernel_size: cubic (square) kernel side.
        stride: stride on every axis.
        padding: padding on every side; ``None`` -> ``kernel_size // 2``.
        padding_mode: ``"zeros"``, ``"reflect"`` or ``"replicate"``.
        bias: add a bias.

    Returns:
        A module mapping (B, in_channels, *S) to (B, out_channels, *S') .
    """
    _check_dims(spatial_dims)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    cls = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    if padding is None:
        padding = kernel_size // 2
    return cls(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        padding_mode=padding_mode if padding > 0 else "zeros", bias=bias,
    )


def norm(name: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer by name.

    ``"instance"`` is affine-free instance norm without running statistics (CycleGAN's choice), so
    train and eval behave the same; ``"batch"`` is batch norm (discriminators only: never inside a
    reversible block, where recomputation would update its running statistics twice);
    ``"none"`` is the identity.
    """
    _check_dims(spatial_dims)
    if name == "none":
        return nn.Identity()
    if name == "instance":
        cls = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=False, track_running_stats=False)
    if name == "batch":
        cls = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        return cls(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {name!r}")


def zero_init(module: nn.Module) -> nn.Module:
    """Zero ``module``'s weight and bias now, and flag it so :func:`init_weights` keeps it at zero."""
    setattr(module, _ZERO_INIT_FLAG, True)
    for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
        if p is not None:
            nn.init.zeros_(p)
    return module


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise every conv from N(0, std) with zero bias, norm scales from N(1, std); in place.

    Convolutions flagged by :func:`zero_init` are set to zero instead.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if getattr(m, _ZERO_INIT_FLAG, False):
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if m.weight is not None:
                nn.init.normal_(m.weight, 1.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
