"""2D generators of the paper's Cityscapes / Maps experiments, and the FCN-score segmenter.

* ``resnet2d`` - the CycleGAN / pix2pix baseline: TWO CycleGAN ResNet generators, one per
  direction (``forward`` = A->B, ``reverse`` = B->A). Each is 7x7 conv (3->K), two 3x3 stride-2
  convs (K->2K->4K), ``depth`` residual blocks on 4K channels, two 3x3 transposed convs
  (4K->2K->K), 7x7 conv (K->3), tanh; reflection padding, instance norm, ReLU. The paper's
  parameter counts (Tables 2 and 4: 3.9 M at K=32 with 6 blocks, 5.7 M with 9) count both
  generators, which is what a model trained in both directions needs.
* ``rev_resnet2d`` - the 2D RevGAN (paper Sec. 3, supplement 7.1): per domain an encoder (the
  ResNet's first three convs) and a decoder (its last three layers), and ONE shared reversible
  core of ``depth`` additive coupling blocks on 4K channels, built by
  :func:`medsr.networks.reversible.make_core`::

      forward(x) = F(x) = Dec_Y(C(Enc_X(x)))       reverse(y) = G(y) = Dec_X(C^-1(Enc_Y(y)))

* ``segnet2d`` - one ResNet generator with ``num_classes`` output logits and no tanh; trained by
  the ``segmentation`` mode on Cityscapes photos to compute the FCN-score of label->photo outputs.

All take and return ``(B, C, H, W)`` with H and W divisible by 4; images are in [-1, 1].
Weights start from N(0, 0.02) (paper Sec. 4.1); the core's last branch convolutions start at
zero, so a fresh core is the identity.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from medsr.networks import layers
from medsr.networks.registry import register_model

__all__ = ["Decoder2d", "Encoder2d", "ResNet2d", "ResnetGenerator2d", "RevResNet2d", "SegNet2d"]


def _conv_norm_relu(cin: int, cout: int, k: int, stride: int, norm: str, padding_mode: str) -> list[nn.Module]:
    return [
        layers.conv(2, cin, cout, k, stride=stride, padding=k // 2, padding_mode=padding_mode),
        layers.norm(norm, 2, cout),
        nn.ReLU(inplace=True),
    ]


class Encoder2d(nn.Sequential):
    """Lift an image to features: 7x7 conv, then two 3x3 stride-2 convs doubling the channels.

    (B, in_channels, H, W) -> (B, 4 * width, H / 4, W / 4).
    """

    def __init__(self, in_channels: int, width: int, norm: str = "instance", padding_mode: str = "reflect") -> None:
        super().__init__(
            *_conv_norm_relu(in_channels, width, 7, 1, norm, padding_mode),
            *_conv_norm_relu(width, 2 * width, 3, 2, norm, padding_mode),
            *_conv_norm_relu(2 * width, 4 * width, 3, 2, norm, padding_mode),
        )


class Decoder2d(nn.Sequential):
    """Project features to an image: two 3x3 transposed convs (x2 each), 7x7 conv, optional tanh.

    (B, 4 * width, H / 4, W / 4) -> (B, out_channels, H, W). Transposed convolutions cannot
    reflect-pad, so they zero-pad as in CycleGAN.
    """

    def __init__(
        self,
        out_channels: int,
        width: int,
        norm: str = "instance",
        padding_mode: str = "reflect",
        tanh: bool = True,
    ) -> None:
        mods: list[nn.Module] = []
        for cin, cout in ((4 * width, 2 * width), (2 * width, width)):
            mods += [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                layers.norm(norm, 2, cout),
                nn.ReLU(inplace=True),
            ]
        mods.append(layers.conv(2, width, out_channels, 7, padding=3, padding_mode=padding_mode))
        if tanh:
            mods.append(nn.Tanh())
        super().__init__(*mods)


class ResidualBlock2d(nn.Module):
    """CycleGAN residual block: x + (conv 3x3, norm, ReLU, conv 3x3, norm)(x); shape-preserving."""

    def __init__(self, channels: int, norm: str = "instance", padding_mode: str = "reflect") -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm_relu(channels, channels, 3, 1, norm, padding_mode),
            layers.conv(2, channels, channels, 3, padding_mode=padding_mode),
            layers.norm(norm, 2, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.body(x)


def _check_size(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[-1] % 4 or x.shape[-2] % 4:
        raise ValueError(f"{name}: image side must be divisible by 4 (two stride-2 convs), got {tuple(x.shape[-2:])}")


class ResnetGenerator2d(nn.Module):
    """One CycleGAN ResNet generator (one direction): encoder, ``depth`` residual blocks, decoder.

    Args:
        in_channels, out_channels: image channels.
        width: K, channels after the first conv (the core runs on 4K).
        depth: residual blocks (6 for 128 px, 9 for 256 px in CycleGAN).
        norm: ``"instance"`` (paper) or ``"none"``.
        padding_mode: ``"reflect"`` (paper) or ``"zeros"``/``"replicate"``.
        tanh: end with tanh (images); False gives logits (segmentation).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 32,
        depth: int = 9,
        norm: str = "instance",
        padding_mode: str = "reflect",
        tanh: bool = True,
    ) -> None:
        super().__init__()
        if depth < 0 or width < 1:
            raise ValueError(f"width must be >= 1 and depth >= 0, got width={width}, depth={depth}")
        self.encoder = Encoder2d(in_channels, width, norm, padding_mode)
        self.blocks = nn.Sequential(*(ResidualBlock2d(4 * width, norm, padding_mode) for _ in range(depth)))
        self.decoder = Decoder2d(out_channels, width, norm, padding_mode, tanh)
        layers.init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W), H and W divisible by 4."""
        _check_size(x, type(self).__name__)
        return self.decoder(self.blocks(self.encoder(x)))


@register_model("resnet2d")
class ResNet2d(nn.Module):
    """pix2pix / CycleGAN baseline: two :class:`ResnetGenerator2d`, ``f`` (A->B) and ``g`` (B->A).

    Args:
        in_channels: channels of domain A; ``out_channels`` of domain B (default the same).
        width, depth, norm, padding_mode: as :class:`ResnetGenerator2d`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        width: int = 32,
        depth: int = 9,
        norm: str = "instance",
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.f = ResnetGenerator2d(in_channels, out_channels, width, depth, norm, padding_mode)
        self.g = ResnetGenerator2d(out_channels, in_channels, width, depth, norm, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A->B: (B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1]."""
        return self.f(x)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """B->A: (B, out_channels, H, W) -> (B, in_channels, H, W) in [-1, 1]."""
        return self.g(y)


@register_model("rev_resnet2d")
class RevResNet2d(nn.Module):
    """2D RevGAN generator: per-domain encoders/decoders around one shared reversible core.

    Args:
        in_channels: channels of domain A; ``out_channels`` of domain B (default the same).
        width: K; the core runs on 4K channels (split in two halves of 2K by each coupling).
        depth: R, reversible blocks in the core (6 Cityscapes, 9 Maps in the paper).
        norm: ``"instance"`` (paper) or ``"none"``, in encoders, decoders and core branches.
        padding_mode: ``"reflect"`` (paper).
        memory_efficient: core activations are recomputed by inversion in backward (constant
            activation memory in depth); False runs the same blocks through plain autograd.
        coupling: ``"additive"`` (paper) or ``"affine"``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        width: int = 32,
        depth: int = 9,
        norm: str = "instance",
        padding_mode: str = "reflect",
        memory_efficient: bool = True,
        coupling: str = "additive",
    ) -> None:
        super().__init__()
        from medsr.networks.reversible import make_core

        out_channels = in_channels if out_channels is None else out_channels
        self.enc_x = Encoder2d(in_channels, width, norm, padding_mode)
        self.dec_x = Decoder2d(in_channels, width, norm, padding_mode)
        self.enc_y = Encoder2d(out_channels, width, norm, padding_mode)
        self.dec_y = Decoder2d(out_channels, width, norm, padding_mode)
        for m in (self.enc_x, self.dec_x, self.enc_y, self.dec_y):
            layers.init_weights(m)
        # make_core initialises its own blocks (N(0, 0.02), last branch conv zero).
        self.core = make_core(
            4 * width, depth, spatial_dims=2, norm=norm, padding_mode=padding_mode,
            memory_efficient=memory_efficient, coupling=coupling,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F = Dec_Y . C . Enc_X: (B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1]."""
        _check_size(x, type(self).__name__)
        return self.dec_y(self.core(self.enc_x(x)))

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """G = Dec_X . C^-1 . Enc_Y: (B, out_channels, H, W) -> (B, in_channels, H, W) in [-1, 1]."""
        _check_size(y, type(self).__name__)
        return self.dec_x(self.core.inverse(self.enc_y(y)))


@register_model("segnet2d")
class SegNet2d(ResnetGenerator2d):
    """Segmentation network for the FCN-score: a ResNet generator emitting class logits.

    Args:
        in_channels: image channels (3).
        num_classes: output logits (19 Cityscapes train ids; ignore pixels are left out of the loss).
        width, depth, norm, padding_mode: as :class:`ResnetGenerator2d`.

    Shapes: (B, in_channels, H, W) -> (B, num_classes, H, W) logits.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 19,
        width: int = 32,
        depth: int = 6,
        norm: str = "instance",
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__(in_channels, num_classes, width, depth, norm, padding_mode, tanh=False)
        self.num_classes = int(num_classes)
