"""SRCNN-3D and RevSRCNN-3D generators (RevGAN supplement, section 7.1), both directions.

    forward(x) = F(x) = Dec_Y(C(Enc_X(x)))          X (LR, upsampled) -> Y (HR)
    reverse(y) = G(y) = Dec_X(C^-1(Enc_Y(y)))       Y -> X

``Enc_*`` = conv 3^3 (C -> K), norm, ReLU; ``Dec_*`` = conv 1^3 (K -> C); ``C`` = ``model.core``,
a reversible sequence of ``depth`` additive-coupling blocks shared by both directions
(``srcnn3d`` is the same model with depth 0: an identity core). Weights start from N(0, 0.02);
the last conv of every reversible branch starts at zero, so each block starts as the identity.

Defaults (``norm="none"``, ``residual=True``) suit training on patches and inferring on larger
windows: instance norm drops each patch's intensity level, which inference on windows of another
size cannot restore, and a global residual (output = input + net(input)) starts the model at its
input rather than at zero. The paper-faithful setting is ``norm="instance", residual=False`` (used
by the Table-3 configs); measured comparisons of the shipped settings, with their commands, are in
``docs/quality.md``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medsr.networks import layers
from medsr.networks.registry import register_model
from medsr.networks.reversible import COUPLINGS, make_core


class RevSRCNN(nn.Module):
    """Two-direction SRCNN with a shared reversible core, in 2D or 3D.

    Args:
        in_channels: channels of domain X (network input of ``forward``).
        out_channels: channels of domain Y (default ``in_channels``).
        width: K, feature channels of the core (even when ``depth > 0``).
        depth: R, number of reversible blocks (0 = plain SRCNN).
        norm: ``"none"`` or ``"instance"`` (after the encoders and inside the branches).
        residual: add the input to the output (``in_channels == out_channels`` required).
        memory_efficient: reversible backward without stored activations.
        padding_mode: ``"reflect"`` or ``"replicate"`` (or ``"zeros"``) for every 3^3 conv.
        coupling: ``"additive"`` (paper) or ``"affine"``.
        spatial_dims: 3 (registered models) or 2.

    Shapes: ``forward``: (B, in_channels, *S) -> (B, out_channels, *S); ``reverse``: the other way.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        width: int = 64,
        depth: int = 4,
        norm: str = "none",
        residual: bool = True,
        memory_efficient: bool = True,
        padding_mode: str = "reflect",
        coupling: str = "additive",
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if in_channels < 1 or out_channels < 1 or width < 1:
            raise ValueError(f"channel counts must be positive (in={in_channels}, out={out_channels}, width={width})")
        if norm not in ("none", "instance"):
            raise ValueError(f"norm must be 'none' or 'instance' for the generator, got {norm!r}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"residual=True adds the input to the output, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels})"
            )
        self.spatial_dims = spatial_dims
        self.residual = bool(residual)

        def encoder(c: int) -> nn.Sequential:
            return nn.Sequential(
                layers.conv(spatial_dims, c, width, 3, padding_mode=padding_mode),
                layers.norm(norm, spatial_dims, width),
                nn.ReLU(inplace=True),
            )

        self.enc_x = encoder(in_channels)
        self.dec_y = layers.conv(spatial_dims, width, out_channels, 1)
        self.enc_y = encoder(out_channels)
        self.dec_x = layers.conv(spatial_dims, width, in_channels, 1)
        layers.init_weights(self)
        # The core is built (and initialised, last branch convs at zero) by make_core.
        self.core = make_core(width, depth, spatial_dims, norm, padding_mode, memory_efficient, coupling)

    @property
    def depth(self) -> int:
        return len(self.core)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F: X -> Y. (B, in_channels, *S) -> (B, out_channels, *S)."""
        out = self.dec_y(self.core(self.enc_x(x)))
        return x + out if self.residual else out

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """G: Y -> X. (B, out_channels, *S) -> (B, in_channels, *S)."""
        out = self.dec_x(self.core.inverse(self.enc_y(y)))
        return y + out if self.residual else out


@register_model("rev_srcnn3d")
def rev_srcnn3d(*, in_channels: int, width: int = 64, depth: int = 4, **kwargs) -> RevSRCNN:
    """RevSRCNN-3D: SRCNN-3D with ``depth`` reversible blocks between encoder and decoder."""
    return RevSRCNN(in_channels=in_channels, width=width, depth=depth, spatial_dims=3, **kwargs)


@register_model("srcnn3d")
def srcnn3d(*, in_channels: int, width: int = 64, depth: int = 0, **kwargs) -> RevSRCNN:
    """SRCNN-3D baseline: conv 3^3, norm, ReLU, conv 1^3 (an identity core, both directions).

    ``depth`` is accepted so both generators share one call signature; it must be 0.
    """
    if depth != 0:
        raise ValueError(f"srcnn3d has no reversible core (depth must be 0, got {depth}); use rev_srcnn3d")
    return RevSRCNN(in_channels=in_channels, width=width, depth=0, spatial_dims=3, **kwargs)
