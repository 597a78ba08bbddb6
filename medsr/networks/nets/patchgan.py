"""PatchGAN discriminators in 3D (RevGAN's 3D variant) and 2D (pix2pix / CycleGAN 70x70).

3D (``patchgan3d``): ``n_layers`` convs 4^3 with stride 2 (64 channels, doubling, capped at 512),
LeakyReLU 0.2, norm after all but the first, then a 1^3 conv to one channel. With padding 1 a
stride-2 4^3 conv halves each side (``n -> floor(n / 2)``), so by default the depth adapts to
``patch_size``: the largest ``n_layers`` whose output still has at least ``min_map_size`` voxels
per side. For 24^3 patches that is 3 layers (24 -> 12 -> 6 -> 3): a 3^3 patch map whose voxels
each see a 22^3 receptive field. (A 4th layer would leave a single 1^3 voxel, which is a global
discriminator, not a patch map, and whose instance norm would output exactly zero.)

2D (``patchgan2d``): the standard 70x70 PatchGAN: 3 stride-2 4x4 convs, one stride-1 4x4 conv,
then a stride-1 4x4 conv to one channel.

Output: raw logits by default (``use_sigmoid=False``); pair them with
``BCEWithLogitsLoss`` (log-sum-exp, numerically stable) or a least-squares loss. The paper's
final sigmoid is available as ``use_sigmoid=True`` for a plain ``BCELoss``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medsr.networks import layers
from medsr.networks.registry import register_model


def auto_n_layers(patch_size: int, min_map_size: int = 2, max_layers: int = 5) -> int:
    """Largest number of stride-2 4^k convs (padding 1) keeping >= ``min_map_size`` per side."""
    n, side = 0, int(patch_size)
    while n < max_layers and side // 2 >= min_map_size:
        side //= 2
        n += 1
    if n == 0:
        raise ValueError(f"patch_size {patch_size} is too small for a PatchGAN (needs >= {2 * min_map_size})")
    return n


class PatchGAN(nn.Module):
    """A PatchGAN in 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the judged image (e.g. 6 DTI channels, or 12 for a conditional
            discriminator fed ``cat(input, output)``).
        width: channels of the first conv (doubling per layer, capped at ``max_width``).
        n_layers: stride-2 convs; ``None`` -> :func:`auto_n_layers` of ``patch_size``.
        patch_size: expected input side, used only when ``n_layers`` is None.
        norm: ``"instance"``, ``"batch"`` or ``"none"``; after every conv but the first and last.
        n_stride1: extra stride-1 4^k convs (with norm) before the final conv (2D: 1).
        final_kernel: kernel of the final one-channel conv (3D: 1, 2D: 4).
        use_sigmoid: end with a sigmoid (probabilities) instead of logits.
        max_width: channel cap.

    Shapes: (B, in_channels, *S) -> (B, 1, *S') with S' about S / 2**n_layers.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        width: int = 64,
        n_layers: int | None = None,
        patch_size: int = 24,
        norm: str = "instance",
        n_stride1: int = 0,
        final_kernel: int = 1,
        use_sigmoid: bool = False,
        max_width: int = 512,
    ) -> None:
        super().__init__()
        if n_layers is None:
            n_layers = auto_n_layers(patch_size)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = int(n_layers)
        mods: list[nn.Module] = []
        c_in, c = in_channels, width
        for i in range(n_layers):
            mods.append(layers.conv(spatial_dims, c_in, c, 4, stride=2, padding=1))
            if i > 0:
                mods.append(layers.norm(norm, spatial_dims, c))
            mods.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c = c, min(c * 2, max_width)
        for _ in range(n_stride1):
            mods += [
                layers.conv(spatial_dims, c_in, c, 4, stride=1, padding=1),
                layers.norm(norm, spatial_dims, c),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c
        # A 1^k final conv needs no padding; pix2pix pads its final 4x4 conv by 1 (30x30 map on 256x256).
        mods.append(layers.conv(spatial_dims, c_in, 1, final_kernel, stride=1, padding=0 if final_kernel == 1 else 1))
        if use_sigmoid:
            mods.append(nn.Sigmoid())
        self.model = nn.Sequential(*mods)
        layers.init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, 1, *S'): per-patch logits (or probabilities)."""
        return self.model(x)


@register_model("patchgan3d")
def patchgan3d(*, in_channels: int, width: int = 64, n_layers: int | None = None, patch_size: int = 24,
               norm: str = "instance", use_sigmoid: bool = False, max_width: int = 512) -> PatchGAN:
    """3D PatchGAN: stride-2 4^3 convs, then a 1^3 conv; depth adapted to ``patch_size``."""
    return PatchGAN(spatial_dims=3, in_channels=in_channels, width=width, n_layers=n_layers,
                    patch_size=patch_size, norm=norm, n_stride1=0, final_kernel=1,
                    use_sigmoid=use_sigmoid, max_width=max_width)


@register_model("patchgan2d")
def patchgan2d(*, in_channels: int, width: int = 64, n_layers: int = 3, norm: str = "instance",
               use_sigmoid: bool = False, max_width: int = 512) -> PatchGAN:
    """2D 70x70 PatchGAN (pix2pix / CycleGAN): 256x256 -> a 30x30 map of logits."""
    return PatchGAN(spatial_dims=2, in_channels=in_channels, width=width, n_layers=n_layers,
                    norm=norm, n_stride1=1, final_kernel=4, use_sigmoid=use_sigmoid, max_width=max_width)
