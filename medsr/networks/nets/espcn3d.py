"""RevESPCN-3D: the reversible core on the LR grid, sub-pixel (pixel-shuffle) output, interpolation base.

The paper's RevSRCNN computes every layer on the HR grid from ``lr_up``. Image-quality-transfer
work on HCP DTI (3D-ESPCN, Tanno et al. 2017; its reversible version, Blumberg et al. 2018) computes
on the LR grid and emits the ``rx*ry*rz`` HR voxels of each LR voxel at the end: at factor 2 that is 8x
fewer voxels per layer, so more training per second and faster inference at the same width and
depth. This model does that with the same shared, invertible core::

    F(x) = up(x_lr) + shuffle(Dec_Y(C(Enc_X(x_lr))))       x_lr = block_mean(x)   (X -> Y)
    G(y) = nn_up(block_mean(y) + Dec_X(C^-1(Enc_Y(unshuffle(y)))))                (Y -> X)

* ``x`` is prep's ``lr_up`` on the HR grid, exactly as for RevSRCNN, so data, checkpoints and the
  command line are unchanged; ``block_mean`` recovers the LR volume exactly when the patch or window
  starts on an LR block boundary (the patch sampler aligns origins to ``data.factor``, and whole-volume
  inference runs its windows on the LR grid through :meth:`forward_lr`).
* ``up`` is a grid-aligned interpolation (``base``: ``cubic`` by default, ``linear``, ``nn``, or
  ``none``), so the network learns only what interpolation misses, and starts as that interpolation
  (the decoders are zero-initialised).
* ``shuffle`` / ``unshuffle`` are the per-axis pixel (un)shuffle of :mod:`medsr.networks.shuffle`
  (MONAI's layout, so equal factors give MONAI's operation); ``C`` is a :func:`make_core` stack of
  additive-coupling blocks, shared by both directions, memory-flat in depth.

The factor is per axis (``factor: [1, 1, 4]`` for thick slices; an int is the same on every axis):
``up`` interpolates only the axes with ``r > 1``, and the decoder emits ``rx*ry*rz`` voxels per LR voxel.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from medsr.factor import Factor, factor_triple
from medsr.networks import layers
from medsr.networks.interpolate import MODES, block_mean, upsample
from medsr.networks.registry import register_model
from medsr.networks.reversible import COUPLINGS, make_core
from medsr.networks.shuffle import pixel_shuffle, pixel_unshuffle


class RevESPCN(nn.Module):
    """Two-direction LR-grid super-resolution network with a shared reversible core (3D).

    Args:
        in_channels: channels of the volumes (6 for DTI, 1 for scalar maps); both domains share them.
        factor: r, the upsampling factor (``data.factor``): an int, or one per axis (x, y, z).
        width: K, feature channels of the core (even when ``depth > 0``).
        depth: R, reversible coupling blocks (0 = an ESPCN without a core).
        base: interpolation added to the output: ``cubic``, ``linear``, ``nn`` or ``none``.
        encoder_layers: 3^3 convolutions (+ReLU) of each encoder before the core.
        memory_efficient: reversible backward without stored activations.
        padding_mode: padding of every 3^3 conv (``replicate`` suits edge-extended volumes).
        coupling: ``additive`` (paper) or ``affine``.

    Shapes: ``forward``: (B, C, rx*x, ry*y, rz*z) -> same; ``forward_lr``: (B, C, x, y, z) ->
    (B, C, rx*x, ry*y, rz*z); ``reverse``: (B, C, rx*x, ry*y, rz*z) -> same (an NN-upsampled LR volume).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        factor: int | Sequence[int] = 2,
        width: int = 64,
        depth: int = 4,
        base: str = "cubic",
        encoder_layers: int = 1,
        memory_efficient: bool = True,
        padding_mode: str = "replicate",
        coupling: str = "additive",
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"channel counts must be positive (in={in_channels}, width={width})")
        if base not in MODES + ("none",):
            raise ValueError(f"base must be one of {MODES + ('none',)}, got {base!r}")
        if encoder_layers < 1:
            raise ValueError(f"encoder_layers must be >= 1, got {encoder_layers}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        self.factor: Factor = factor_triple(factor)
        self.base = base
        c, r3 = int(in_channels), self.factor[0] * self.factor[1] * self.factor[2]

        def encoder(cin: int) -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(encoder_layers):
                mods += [layers.conv(3, cin if i == 0 else width, width, 3, padding_mode=padding_mode),
                         nn.ReLU(inplace=True)]
            return nn.Sequential(*mods)

        self.enc_x = encoder(c)
        self.enc_y = encoder(c * r3)  # sees the HR voxels of each LR voxel as channels
        self.dec_y = layers.zero_init(layers.conv(3, width, c * r3, 3, padding_mode=padding_mode))
        self.dec_x = layers.zero_init(layers.conv(3, width, c, 3, padding_mode=padding_mode))
        layers.init_weights(self)
        self.core = make_core(width, depth, 3, "none", padding_mode, memory_efficient, coupling)

    @property
    def depth(self) -> int:
        return len(self.core)

    @property
    def input_factor(self) -> Factor:
        """The model reads an NN-upsampled input through its blocks (inference aligns windows per axis)."""
        return self.factor

    def _base(self, x_lr: torch.Tensor) -> torch.Tensor:
        if self.base == "none":
            return torch.zeros((*x_lr.shape[:2], *(s * r for s, r in zip(x_lr.shape[2:], self.factor))),
                               dtype=x_lr.dtype, device=x_lr.device)
        return upsample(x_lr, self.factor, self.base)

    def forward_lr(self, x_lr: torch.Tensor) -> torch.Tensor:
        """F from the LR grid: (B, C, x, y, z) -> (B, C, rx*x, ry*y, rz*z)."""
        h = self.dec_y(self.core(self.enc_x(x_lr)))
        return self._base(x_lr) + pixel_shuffle(h, self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F: X -> Y on the HR grid. (B, C, X, Y, Z) NN-upsampled input, sizes multiples of r per axis."""
        return self.forward_lr(block_mean(x, self.factor))

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """G: Y -> X. (B, C, X, Y, Z) HR -> (B, C, X, Y, Z) NN-upsampled LR estimate."""
        lr = block_mean(y, self.factor) + self.dec_x(self.core.inverse(self.enc_y(pixel_unshuffle(y, self.factor))))
        return upsample(lr, self.factor, "nn")


@register_model("rev_espcn3d")
def rev_espcn3d(*, in_channels: int, width: int = 64, depth: int = 4, **kwargs) -> RevESPCN:
    """RevESPCN-3D: reversible core on the LR grid, pixel-shuffle output over a cubic base."""
    return RevESPCN(in_channels=in_channels, width=width, depth=depth, **kwargs)
