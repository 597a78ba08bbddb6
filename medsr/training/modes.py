"""The built-in training modes: the paper's eq. 12 and 13 and the L1/L2 ablation.

Each mode is a :class:`medsr.training.base.TrainMode` registered by name; the base class builds the
generator and the discriminators a mode names, their optimisers and schedules. Other modules
register their own modes the same way (the 2D module adds ``segmentation``).

Directions: ``F = generator.forward`` maps X (LR-up) to Y (HR); ``G = generator.reverse`` maps Y
to X through the same shared reversible core, so training either direction trains both.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.config import Config
from medsr.losses import GANLoss, pixel_loss
from medsr.networks.degrade import Degradation
from medsr.training.base import GeneratorPasses, TrainMode, Wrap, create_mode, list_modes, no_wrap, register_mode
from medsr.training.networks import DataFacts
from medsr.training.image_pool import ImagePool

__all__ = ["GeneratorPasses", "Paired", "PairedL1", "PairedL2", "TrainMode", "Unpaired", "create_mode",
           "list_modes", "region_loss", "register_mode"]


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def region_loss(loss_fn: Callable[..., torch.Tensor], pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """``loss_fn`` averaged over every voxel, or over the voxels where ``mask`` (B, 1, *S) is 1."""
    if mask is None:
        return loss_fn(pred, target)
    per_voxel = loss_fn(pred, target, reduction="none")  # (B, C, *S)
    weight = mask.expand_as(per_voxel)
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0)


class _PixelMode(TrainMode):
    kind = "l1"

    def __init__(self, cfg: Config, rank: int = 0) -> None:
        super().__init__(cfg, rank)
        self.lam_reverse = float(cfg.train.lambda_reverse)
        self.brain_only = cfg.train.loss_region == "brain"
        # Without the reverse term, G's encoder/decoder get no gradient: DDP must be told.
        self.find_unused = self.lam_reverse == 0
        self.reverse_untrained_by = "train.lambda_reverse: 0" if self.lam_reverse == 0 else ""

    @property
    def loss_names(self) -> list[str]:
        return [f"{self.kind}_F", f"{self.kind}_G"]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        mask = batch.get("mask") if self.brain_only else None
        loss_fn = pixel_loss(self.kind)
        reverse = self.lam_reverse > 0
        with self.autocast():
            out = self.passes(x=x, y=y if reverse else None)
            # Losses in float32 whatever the outputs' precision: a bf16 mean over a patch loses digits.
            loss_f = region_loss(loss_fn, out["fake_y"].float(), y, mask)  # F(x) ~ y
            loss = loss_f
            if reverse:  # G(y) ~ x, through the same core run backwards
                loss_g = region_loss(loss_fn, out["fake_x"].float(), x, mask)
                loss = loss + self.lam_reverse * loss_g
            else:
                loss_g = torch.zeros((), device=loss_f.device)
        self.optimise("G", loss)
        return {f"{self.kind}_F": loss_f.detach(), f"{self.kind}_G": loss_g.detach()}


@register_mode("paired_l1")
class PairedL1(_PixelMode):
    """The paper's "w/o L_GAN": L1(F(x), y) + L1(G(y), x)."""

    kind = "l1"


@register_mode("paired_l2")
class PairedL2(_PixelMode):
    """As ``paired_l1`` with the squared error."""

    kind = "l2"


def _d_loss(gan: GANLoss, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (loss(D(real), 1) + loss(D(fake), 0)), real and fake in one forward (one DDP call)."""
    pred = disc(torch.cat([real, fake.detach()], 0))
    n = real.shape[0]
    return 0.5 * (gan(pred[:n], True) + gan(pred[n:], False))


@register_mode("paired")
class Paired(TrainMode):
    """Paired RevGAN (eq. 12): lambda * (L1(F) + L1(G)) + cGAN(F, D_Y) + cGAN(G, D_X).

    The discriminators are conditional (pix2pix): ``D_Y`` sees (x, y) against (x, F(x)) and
    ``D_X`` sees (y, x) against (y, G(y)), input and output concatenated on channels. With
    ``train.loss_region: brain`` the L1 terms are averaged over brain voxels, as in ``paired_l1``
    (the discriminators judge whole patches).
    """

    discriminator_names = ("D_Y", "D_X")

    def __init__(self, cfg: Config, rank: int = 0) -> None:
        super().__init__(cfg, rank)
        self.gan = GANLoss(cfg.train.gan_loss)
        self.lam = cfg.train.lambda_l1
        self.brain_only = cfg.train.loss_region == "brain"

    @property
    def loss_names(self) -> list[str]:
        return ["gan_F", "gan_G", "l1_F", "l1_G", "D_Y", "D_X"]

    def discriminator_in_channels(self, channels: int) -> int:
        return 2 * channels

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        mask = batch.get("mask") if self.brain_only else None
        d_y, d_x = self.discriminators_ddp["D_Y"], self.discriminators_ddp["D_X"]
        # Generator step: discriminators frozen and called unwrapped (no DDP reduction for them).
        raw = [self.discriminators["D_Y"], self.discriminators["D_X"]]
        _set_requires_grad(raw, False)
        with self.autocast():
            out = self.passes(x=x, y=y)
            # The fakes in float32 (the inputs' dtype) whatever autocast made of the decoder's output.
            fy, fx = out["fake_y"].float(), out["fake_x"].float()
            gan_f = self.gan(raw[0](torch.cat([x, fy], 1)), True)
            gan_g = self.gan(raw[1](torch.cat([y, fx], 1)), True)
            l1_f = region_loss(nn.functional.l1_loss, fy, y, mask)
            l1_g = region_loss(nn.functional.l1_loss, fx, x, mask)
            loss_g_total = gan_f + gan_g + self.lam * (l1_f + l1_g)
        self.optimise("G", loss_g_total)
        _set_requires_grad(raw, True)
        # Discriminator step on the same fakes.
        with self.autocast():
            loss_dy = _d_loss(self.gan, d_y, torch.cat([x, y], 1), torch.cat([x, fy], 1))
            loss_dx = _d_loss(self.gan, d_x, torch.cat([y, x], 1), torch.cat([y, fx], 1))
        self.optimise("D", loss_dy + loss_dx)
        return {"gan_F": gan_f.detach(), "gan_G": gan_g.detach(), "l1_F": l1_f.detach(),
                "l1_G": l1_g.detach(), "D_Y": loss_dy.detach(), "D_X": loss_dx.detach()}


@register_mode("unpaired")
class Unpaired(TrainMode):
    """Unpaired RevGAN (eq. 13): GAN(F, D_Y) + GAN(G, D_X) + lambda * (|G(F(x)) - x| + |F(G(y)) - y|),
    plus ``lambda_degrade * (|D(F(x)) - x_lr| + |G(y)_lr - D(y)| + |F(up(D(y))) - y|)``.

    Discriminators see pooled fakes (a 50-sample history by default); x and y come from
    independent draws (see the unpaired sampler, and ``data.domains`` for disjoint subjects).

    The degradation terms use what unpaired data still know, the degradation ``D`` prep applied
    (:class:`medsr.networks.degrade.Degradation`: the block mean, or the slice profile; for DTI the mean
    over each block's brain voxels, as prep fits LR tensors to degraded DWIs): F's output,
    degraded, must give back the LR voxels of its own input (``x_lr``, the block mean of ``lr_up``), and
    G, which maps an HR volume to its LR estimate, must be that degradation (``G(y)_lr``, the block
    mean of G's NN-upsampled output, against ``D(y)``), and F must undo it on the HR volumes the run
    holds (``F(up(D(y))) ~ y``, ``up`` prep's NN upsampling: pairs made from the Y subjects alone, the
    way prep makes them). The first anchors F to the measured signal where the GAN alone lets it drift;
    the second keeps G from hiding detail in its output for F to decode; the third teaches F the real
    degradation at once, where the cycle through a G still learning it does so slowly. 0 (the default)
    is the paper's loss. With ``train.loss_region: brain`` the cycle terms average over each patch's brain
    voxels and the degradation terms weight each LR voxel by the brain fraction of its block (DTI: every
    block holding brain counts, those under half brain with prep's zero tensor).

    ``train.reverse: degradation`` replaces the learned G by the known degradation itself (``up(D(y))``):
    the cycle terms are then ``|D(F(x)) - x_lr|`` (over LR voxels, weighted as the degradation terms) and
    ``|F(up(D(y))) - y|``, F has one adversary (D_Y) and no pass runs G, so a step costs about a third of
    the learned G's. ``lambda_degrade`` must be 0 there: its terms are the cycle terms.
    """

    discriminator_names: tuple[str, ...] = ("D_Y", "D_X")

    def __init__(self, cfg: Config, rank: int = 0) -> None:
        super().__init__(cfg, rank)
        self.gan = GANLoss(cfg.train.gan_loss)
        self.lam = cfg.train.lambda_cycle
        self.lam_degrade = float(cfg.train.lambda_degrade)
        self.brain_only = cfg.train.loss_region == "brain"
        self.known_reverse = cfg.train.reverse == "degradation"
        if self.known_reverse:
            if self.lam_degrade > 0:
                raise ValueError("config key 'train.lambda_degrade': with train.reverse: degradation the cycle terms "
                                 "are the degradation terms; set it to 0 (train.lambda_cycle weighs them)")
            self.discriminator_names = ("D_Y",)
            self.find_unused = True  # G's encoder and decoder get no gradient (DDP must be told)
            self.reverse_untrained_by = "train.reverse: degradation"
        if (self.lam_degrade > 0 or self.known_reverse) and cfg.data.normalise and cfg.data.norm_stats != "shared":
            # D(F(x)) is in y's normalised units and x_lr in x's: they compare only under one normalisation.
            key = "train.reverse" if self.known_reverse else "train.lambda_degrade"
            raise ValueError(f"config key {key!r}: the degradation term compares F's output with its "
                             "input, so both need one normalisation; set data.norm_stats: shared")
        seed = cfg.train.seed * 1000 + rank  # each rank keeps its own pool
        self.pool_y = ImagePool(cfg.train.pool_size, seed=seed)
        self.pool_x = ImagePool(cfg.train.pool_size, seed=seed + 500)

    @property
    def loss_names(self) -> list[str]:
        if self.known_reverse:
            return ["gan_F", "cycle_x", "cycle_y", "D_Y"]
        names = ["gan_F", "gan_G", "cycle_x", "cycle_y", "D_Y", "D_X"]
        return names + ["degrade_F", "degrade_G", "degrade_Y"] if self.lam_degrade > 0 else names

    def setup(self, facts: DataFacts, device: torch.device, wrap: Wrap = no_wrap) -> None:
        super().setup(facts, device, wrap)
        self.degrade = Degradation(facts.factor, facts.slice_profile).to(self.device)
        # DTI: prep fits LR tensors to degraded DWIs, which the background does not dilute (brain_mean).
        self.dti = facts.kind == "dti" and facts.channels == 6
        if self.dti and facts.norm and facts.norm.get("y") is not None:
            stats = facts.norm["y"]
            self.y_mean, self.y_std = (torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1, 1).to(self.device)
                                       for v in (stats.mean, stats.std))
        else:
            self.y_mean, self.y_std = 0.0, 1.0

    def _lr(self, up: torch.Tensor) -> torch.Tensor:
        """The LR voxels of an NN-upsampled patch (each block holds one value), cut as ``D``'s output."""
        return self.degrade.crop_lr(F.avg_pool3d(up, self.degrade.factor))

    def _prep_lr(self, hr: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the LR voxels prep would write for HR patch ``hr``, the weight of each in a loss), normalised units.

        Scalar data: prep's block mean (or profile); weight: the block's brain fraction when masked. DTI
        with a mask: the mean over each block's brain voxels in mm^2/s (zero-tensor background is not
        averaged in, as in prep's fit of degraded DWIs) where the block is at least half brain, zero where
        it is less (prep fits inside the LR mask only); weight: every block holding brain.
        """
        if not (self.dti and mask is not None):
            return self.degrade(hr), (self.degrade.block_fraction(mask) if mask is not None else None)
        fitted, fraction = self.degrade.brain_mean(hr * self.y_std + self.y_mean, mask)
        fitted = fitted * (fraction >= 0.5)
        return (fitted - self.y_mean) / self.y_std, (fraction > 0).float()

    def _degrade_loss(self, hr: torch.Tensor, lr: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """|D(hr) - lr| over the LR voxels of a patch (:meth:`_prep_lr`)."""
        degraded, weight = self._prep_lr(hr, mask)
        return region_loss(nn.functional.l1_loss, degraded, lr, weight)

    def _known_input(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``lr_up`` as prep would make it from HR patch ``y``: NN-upsampled :meth:`_prep_lr` (a profile's margin
        slices edge-extended back to the patch size; the loss leaves them out)."""
        lr, _ = self._prep_lr(y, mask)
        up = nn.functional.interpolate(lr, scale_factor=self.degrade.factor, mode="nearest")
        m = self.degrade.margin * self.degrade.factor[self.degrade.axis] if self.degrade.axis is not None else 0
        if m:
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - self.degrade.axis)] = pad[2 * (2 - self.degrade.axis) + 1] = m
            up = F.pad(up, pad, mode="replicate")
        return up.detach()

    def _undo_loss(self, fake: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """|F(up(D(y))) - y| (``fake`` = F's output for :meth:`_known_input`), where the degradation's profile lies
        inside the patch."""
        crop = self.degrade.crop_hr
        return region_loss(nn.functional.l1_loss, crop(fake.float()), crop(y), crop(mask) if mask is not None else None)

    def _known_reverse_step(self, x: torch.Tensor, y: torch.Tensor, mask_x: torch.Tensor | None,
                            mask_y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """A step with G = up(D) (``train.reverse: degradation``): F over x and G(y) in one pass, D_Y only."""
        n = x.shape[0]
        d_y = self.discriminators["D_Y"]
        _set_requires_grad([d_y], False)
        with self.autocast():
            out = self.passes(x=torch.cat([x, self._known_input(y, mask_y)]))
            fy = out["fake_y"][:n].float()
            gan_f = self.gan(d_y(fy), True)
            cyc_x = self._degrade_loss(fy, self._lr(x), mask_x)  # G(F(x)) ~ x on the LR voxels x holds
            cyc_y = self._undo_loss(out["fake_y"][n:], y, mask_y)  # F(G(y)) ~ y
            loss = gan_f + self.lam * (cyc_x + cyc_y)
        self.optimise("G", loss)
        _set_requires_grad([d_y], True)
        with self.autocast():
            loss_dy = _d_loss(self.gan, self.discriminators_ddp["D_Y"], y, self.pool_y.query(fy))
        self.optimise("D", loss_dy)
        return {"gan_F": gan_f.detach(), "cycle_x": cyc_x.detach(), "cycle_y": cyc_y.detach(), "D_Y": loss_dy.detach()}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["y"]
        mask_x = batch.get("mask_x") if self.brain_only else None
        mask_y = batch.get("mask_y") if self.brain_only else None
        if self.known_reverse:
            return self._known_reverse_step(x, y, mask_x, mask_y)
        raw = [self.discriminators["D_Y"], self.discriminators["D_X"]]
        _set_requires_grad(raw, False)
        n = x.shape[0]
        with self.autocast():
            # With the known degradation, F also sees each y degraded as prep would (one forward for both).
            x_in = torch.cat([x, self._known_input(y, mask_y)]) if self.lam_degrade > 0 else x
            out = self.passes(x=x_in, y=y, cycle=True)
            # float32 fakes: the pools keep (and checkpoint) them in the data's dtype at any precision.
            fy, fx = out["fake_y"][:n].float(), out["fake_x"].float()
            gan_f = self.gan(raw[0](fy), True)
            gan_g = self.gan(raw[1](fx), True)
            cyc_x = region_loss(nn.functional.l1_loss, out["rec_x"][:n].float(), x, mask_x)
            cyc_y = region_loss(nn.functional.l1_loss, out["rec_y"].float(), y, mask_y)
            loss_g_total = gan_f + gan_g + self.lam * (cyc_x + cyc_y)
            if self.lam_degrade > 0:
                deg_f = self._degrade_loss(fy, self._lr(x), mask_x)  # D(F(x)) ~ x_lr
                deg_g = self._degrade_loss(y, self._lr(fx), mask_y)  # G(y)_lr ~ D(y)
                deg_y = self._undo_loss(out["fake_y"][n:], y, mask_y)  # F(up(D(y))) ~ y
                loss_g_total = loss_g_total + self.lam_degrade * (deg_f + deg_g + deg_y)
        self.optimise("G", loss_g_total)
        _set_requires_grad(raw, True)
        with self.autocast():
            loss_dy = _d_loss(self.gan, self.discriminators_ddp["D_Y"], y, self.pool_y.query(fy))
            loss_dx = _d_loss(self.gan, self.discriminators_ddp["D_X"], x, self.pool_x.query(fx))
        self.optimise("D", loss_dy + loss_dx)
        losses = {"gan_F": gan_f.detach(), "gan_G": gan_g.detach(), "cycle_x": cyc_x.detach(),
                  "cycle_y": cyc_y.detach(), "D_Y": loss_dy.detach(), "D_X": loss_dx.detach()}
        if self.lam_degrade > 0:
            losses.update(degrade_F=deg_f.detach(), degrade_G=deg_g.detach(), degrade_Y=deg_y.detach())
        return losses

    def rank_state_dict(self) -> dict[str, Any]:
        return {"pool_y": self.pool_y.state_dict(), "pool_x": self.pool_x.state_dict()}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.pool_y.load_state_dict(state["pool_y"], self.device)
            self.pool_x.load_state_dict(state["pool_x"], self.device)
