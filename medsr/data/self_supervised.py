"""Self-supervised pairs from thick-slice scans alone (``data.type: self``), in the manner of SMORE.

A thick-slice scan (e.g. 1 x 1 x 4 mm) is already high resolution in plane. Degrading one in-plane axis
the way the scanner degraded the slice axis gives a pair whose input looks like the scan's thick axis
and whose target is what the scan itself holds (Zhao et al., SMORE, IEEE TMI 2021). A model trained on
such pairs then restores the thick axis. Nothing but the scans (``medsr prep volumes --lr-only``: the
manifest's ``lr`` and ``mask``) is read: no HR volume exists, and none is opened.

Orientation. The model restores the data's slice axis ``s`` (the one axis whose factor is above 1,
``factor: auto``), exactly as it will at inference. A training pair is a region of the scan moved so
that the in-plane axis to degrade lies along ``s`` and the scan's own slice axis along the other
position ``q`` (the lower in-plane index, :func:`pair_axes`); the remaining in-plane axis stays where
it is. Which in-plane axis is degraded is drawn per item (the two choices differ by an in-plane
rotation by 90 degrees), and with ``data.flip`` every axis may be mirrored (a flip commutes with the
degradation: blocks stay whole and profiles are symmetric).

Degradation. The region is degraded along ``s`` by :func:`medsr.degrade.degrade_array`, prep's own
function, with the scan's factor and slice profile, then NN-upsampled back (prep's ``lr_up``): the pair
is exactly what ``medsr prep volumes`` would have made of a scan whose slice axis were that in-plane
axis. A Gaussian profile reaches past its slice; the region is read with :data:`PROFILE_MARGIN` LR
slices more on each side along ``s``, degraded whole, and those slices dropped again, so every kept LR
voxel sees the profile within the scan (the weight beyond two neighbouring slices is below 1e-8).

Patches: ``data.patch_size`` voxels along ``s`` and the other in-plane axis, ``data.slab`` native slices
along ``q`` (1: each pair is one slice of the scan, SMORE's 2D setting run by the 3D model; its
replicate padding makes the slice's neighbours copies of it, and at inference they are real neighbours
one in-plane voxel away). Positions are drawn at random around brain voxels (``data.random_per_subject``
per scan and epoch) and held to ``data.min_brain_fraction``.

Scans are read into memory once (a thick-slice scan is a few MB). Normalisation statistics are the
brain voxels' of the training scans, for input and target alike (both are the scan's own units).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.data.registry import TrainData, register_dataset
from medsr.data.sampler import EpochBatchSampler, Item
from medsr.normalise import ChannelStats, brain_stats

PROFILE_MARGIN = 2  # LR slices read beyond each end of a region along s for a Gaussian profile


def pair_axes(factor: tuple[int, int, int]) -> tuple[int, int, int]:
    """(s, q, o): the slice axis the model restores, and the two in-plane positions (q holds the scan's slices).

    Raises:
        ValueError: the factor does not thicken exactly one axis (``1 1 4`` does; ``2``, ``2 2 4`` do not).
    """
    thick = [a for a in range(3) if factor[a] > 1]
    if len(thick) != 1:
        shown = " ".join(map(str, factor))
        raise ValueError(f"self-supervised training restores one thick axis from in-plane detail; factor {shown} "
                         "must be 1 on the in-plane axes and above 1 on the slice axis (e.g. 1 1 4)")
    s = thick[0]
    q, o = (a for a in range(3) if a != s)
    return s, q, o


def region_permutation(degraded: int, factor: tuple[int, int, int]) -> tuple[int, int, int]:
    """The axis permutation (new axis k = old axis ``perm[k]``) that puts in-plane axis ``degraded`` at s and the slices at q."""
    s, q, o = pair_axes(factor)
    other = o if degraded == q else q
    perm = [0, 0, 0]
    perm[s], perm[q], perm[o] = degraded, s, other
    return tuple(perm)  # type: ignore[return-value]


def make_pair(region: np.ndarray, factor: tuple[int, int, int], profile: str, margin: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) from a region already in model orientation: prep's degradation along s, NN-upsampled back.

    Args:
        region: (C, X, Y, Z) raw values, the slice axis s of ``factor`` holding ``margin`` LR blocks more on
            each side than the pair (sizes along s a multiple of the factor).
        factor: the data's factor (one axis above 1).
        profile: ``box`` or ``gaussian`` (the scan's slice profile).
        margin: LR blocks dropped again from each end along s after degrading.

    Returns:
        ``(x, y)``, both (C, X, Y, Z - 2 * margin * r) along s: ``x = nn_up(degrade(region))``, ``y`` the region.
    """
    from medsr.degrade import degrade_array, nn_upsample_array

    s = pair_axes(factor)[0]
    r = factor[s]
    lr = degrade_array(region, factor, profile=profile)
    if margin:
        lr = lr.take(np.arange(margin, lr.shape[1 + s] - margin), axis=1 + s)
        region = region.take(np.arange(margin * r, region.shape[1 + s] - margin * r), axis=1 + s)
    return nn_upsample_array(lr, factor).astype(np.float32, copy=False), np.ascontiguousarray(region, np.float32)


@dataclass
class Scan:
    """One thick-slice scan in memory: ``data`` (C, X, Y, Z) float32, ``mask`` (X, Y, Z) bool on the same grid."""

    name: str
    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        self.brain = np.argwhere(self.mask).astype(np.int32)  # brain voxel coordinates (N, 3)

    @property
    def voxel_size(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def load_scans(manifest: str | Path, subjects: list[str] | None = None) -> tuple[list[Scan], dict[str, Any]]:
    """The scans of an LR-only manifest (``lr`` and ``mask`` only), with {"factor", "slice_profile", "kind", "channels"}.

    Raises:
        ValueError: unknown subjects, rows with an HR volume, DTI, mixed factors or profiles, a factor
            that does not thicken one axis, or in-plane voxels that differ from the target slice spacing.
    """
    from medsr.factor import factor_triple, format_factor
    from medsr.io import load_mask, load_volume
    from medsr.manifest import is_lr_only, read_manifest

    df = read_manifest(manifest)
    if subjects is not None:
        missing = [s for s in subjects if s not in set(df["subject"])]
        if missing:
            raise ValueError(f"config key 'data.subjects': {', '.join(missing)} not among the ok subjects of "
                             f"{manifest} ({', '.join(sorted(df['subject'])) or 'none'})")
        df = df[df["subject"].isin(subjects)]
    if len(df) == 0:
        raise ValueError(f"{manifest}: no subject with status ok to train on")
    for _, row in df.iterrows():
        if not is_lr_only(row):
            raise ValueError(f"{manifest}: subject {row['subject']} has an HR volume; data.type self trains on scans "
                             "prepared with 'medsr prep volumes --lr-only' (paired data: data.type patches3d)")
        if row["kind"] != "scalar":
            raise ValueError(f"{manifest}: subject {row['subject']} is {row['kind']}; self-supervised training "
                             "supports scalar volumes only (DTI is not supported)")
    factors = {factor_triple(f) for f in df["factor"]}
    profiles = set(df["slice_profile"])
    if len(factors) > 1 or len(profiles) > 1:
        shown = ", ".join(format_factor(f, " ") for f in sorted(factors))
        raise ValueError(f"{manifest}: scans mix factors [{shown}] / slice profiles {sorted(profiles)}; train on one")
    factor = factors.pop()
    s, q, o = pair_axes(factor)
    scans = []
    for _, row in df.iterrows():
        vol = load_volume(row["lr"], name=str(row["lr"]))
        scan = Scan(str(row["subject"]), vol.data.astype(np.float32, copy=False), load_mask(row["mask"], vol),
                    vol.affine)
        vox = scan.voxel_size
        # The pairs emulate slices r in-plane voxels thick: that is the scan's slice only if the in-plane
        # voxel is the HR voxel the factor implies along the slice axis.
        if not np.allclose(vox[[q, o]], vox[s] / factor[s], rtol=0.1):
            raise ValueError(f"{row['lr']}: voxels {' x '.join(f'{v:.3g}' for v in vox)} mm: factor "
                             f"{format_factor(factor, ' ')} makes {vox[s] / factor[s]:.3g} mm slices, but "
                             f"self-supervised pairs need them as fine as the in-plane voxels; use "
                             f"factor {round(vox[s] / vox[[q, o]].mean())} on the slice axis")
        scans.append(scan)
    info = {"factor": factor, "slice_profile": profiles.pop(), "kind": "scalar",
            "channels": int(scans[0].data.shape[0]), "manifest": str(manifest)}
    return scans, info


class SelfPairs(torch.utils.data.Dataset):
    """Random self-supervised pairs of thick-slice scans (see the module docstring).

    Args:
        scans: the training scans.
        factor: the data's factor (one axis above 1).
        profile: the scans' slice profile.
        patch_size: pair edge along s and the other in-plane axis (a multiple of the factor).
        slab: the pair's extent along q (native slices).
        per_scan: pairs per scan and epoch.
        min_fraction: least brain fraction of a pair.
        flip: mirror pairs along random axes.
        norm: normalisation of input and target.
        with_mask: also return the pair's brain mask (``train.loss_region: brain``).

    Items come from a paired :class:`medsr.data.sampler.EpochBatchSampler`: ``dataset[(i, i, seed, seed)]``
    returns ``{"x": (C, *P), "y": (C, *P)}`` float32 tensors (and ``"mask"``: (1, *P) in {0, 1}) with P
    the pair's shape: ``patch_size`` along s and o, ``slab`` along q.
    """

    def __init__(self, scans: list[Scan], factor: tuple[int, int, int], profile: str, patch_size: int, slab: int,
                 per_scan: int, min_fraction: float = 0.01, flip: bool = False, norm: ChannelStats | None = None,
                 with_mask: bool = False) -> None:
        self.scans, self.factor, self.profile = scans, factor, profile
        self.s, self.q, self.o = pair_axes(factor)
        self.size, self.slab = int(patch_size), int(slab)
        self.margin = PROFILE_MARGIN if profile != "box" else 0
        self.per_scan, self.min_fraction, self.flip = int(per_scan), float(min_fraction), bool(flip)
        self.norm = norm or ChannelStats.identity(scans[0].data.shape[0])
        self.with_mask = bool(with_mask)
        r = factor[self.s]
        if self.size % r:
            raise ValueError(f"config key 'data.patch_size': {self.size} is not a multiple of the factor {r}")
        reach = self.size + 2 * self.margin * r  # along the degraded in-plane axis
        for scan in scans:
            n = scan.mask.shape
            if min(n[self.q], n[self.o]) < reach or n[self.s] < self.slab:
                raise ValueError(f"subject {scan.name}: scan {tuple(n)} is too small for pairs of {self.size} "
                                 f"in-plane voxels (+{reach - self.size} for the slice profile) and a slab of "
                                 f"{self.slab} slice(s)")

    def __len__(self) -> int:
        return self.per_scan * len(self.scans)

    def _region(self, scan: Scan, seed: int) -> tuple[tuple[int, int, int], tuple[slice, ...], tuple[slice, ...]]:
        """(permutation, the region with its margin, the pair's part of it) for one item, drawn from ``seed``."""
        rng = np.random.default_rng([seed, 1])
        degraded = (self.q, self.o)[int(rng.integers(2))]
        perm = region_permutation(degraded, self.factor)
        m = self.margin * self.factor[self.s]
        ext = np.zeros(3, np.int64)  # the region's extent per scan axis, margin included
        pad = np.zeros(3, np.int64)
        for k in range(3):
            ext[perm[k]] = {self.s: self.size + 2 * m, self.q: self.slab, self.o: self.size}[k]
        pad[degraded] = m
        shape = np.asarray(scan.mask.shape)
        best = None
        for _ in range(16):  # rejection sampling against the brain rule
            centre = scan.brain[rng.integers(len(scan.brain))]
            origin = np.clip(centre - ext // 2, 0, shape - ext)
            outer = tuple(slice(int(a), int(a + e)) for a, e in zip(origin, ext))
            inner = tuple(slice(int(a + p), int(a + e - p)) for a, e, p in zip(origin, ext, pad))
            best = best or (perm, outer, inner)
            if scan.mask[inner].mean() >= self.min_fraction:
                return perm, outer, inner
        return best  # type: ignore[return-value]

    def __getitem__(self, item: Item) -> dict[str, torch.Tensor]:
        if isinstance(item, (int, np.integer)):
            item = (int(item), int(item), 0, 0)
        index, _, seed, _ = item
        scan = self.scans[index % len(self.scans)]
        perm, outer, inner = self._region(scan, seed)
        region = np.transpose(scan.data[(slice(None),) + outer], (0,) + tuple(p + 1 for p in perm))
        x, y = make_pair(region, self.factor, self.profile, self.margin)
        bits = np.random.default_rng([seed, 2]).integers(2, size=3) if self.flip else np.zeros(3, int)
        axes = tuple(a + 1 for a in range(3) if bits[a])
        out = {"x": self._tensor(self.norm.normalise(x, channel_axis=0), axes),
               "y": self._tensor(self.norm.normalise(y, channel_axis=0), axes)}
        if self.with_mask:
            mask = np.transpose(scan.mask[inner], perm)[None].astype(np.float32)
            out["mask"] = self._tensor(mask, axes)
        return out

    @staticmethod
    def _tensor(a: np.ndarray, axes: tuple[int, ...]) -> torch.Tensor:
        a = np.flip(a, axis=axes).copy() if axes else a  # a copy: a flipped length-1 axis keeps its negative stride
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@register_dataset("self")
def build_self(cfg: Any, dist: Any) -> TrainData:
    """Builder for ``data.type: self`` (reads ``data.manifest``, a ``medsr prep volumes --lr-only`` manifest)."""
    from medsr.factor import factor_value

    d = cfg.data
    if not d.manifest:
        raise ValueError("config key 'data.manifest' is required for data.type 'self' (a manifest.csv from "
                         "'medsr prep volumes --lr-only')")
    if d.sampling != "random" or d.random_per_subject < 1:
        raise ValueError("data.type 'self' draws pairs at random positions: set data.sampling: random and "
                         "data.random_per_subject >= 1")
    if d.permute:
        raise ValueError("config key 'data.permute': data.type 'self' already turns pairs in plane; set it false")
    if not isinstance(d.patch_size, int):
        raise ValueError(f"config key 'data.patch_size': data.type 'self' takes one int (the pairs' in-plane edge), "
                         f"got {d.patch_size!r}")
    scans, info = load_scans(d.manifest, d.subjects)
    factor = info["factor"]
    s, q, _ = pair_axes(factor)
    slab = min(int(d.slab or d.patch_size), min(sc.mask.shape[s] for sc in scans))
    if d.slab is not None and slab != d.slab and dist.rank == 0:
        print(f"data.slab {d.slab} -> {slab}: the scans hold {slab} slices", file=sys.stderr)
    c = info["channels"]
    norm = brain_stats((sc.data, sc.mask) for sc in scans) if d.normalise else ChannelStats.identity(c)
    dataset = SelfPairs(scans, factor, info["slice_profile"], d.patch_size, slab, d.random_per_subject,
                        d.min_brain_fraction, d.flip, norm, with_mask=cfg.train.loss_region == "brain")
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size)
    entry = {"factor": factor_value(factor), "patch_size": int(d.patch_size), "channels": c, "kind": info["kind"],
             "subjects": [sc.name for sc in scans], "n_patches": 0, "flip": bool(d.flip), "permute": False,
             "self_supervised": True, "slab": int(slab), "slice_profile": info["slice_profile"]}
    # The HR voxel the factor implies: inference tells an LR-grid input (the scan) by it.
    vox = np.array([sc.voxel_size / np.asarray(factor) for sc in scans])
    if np.allclose(vox, vox[0], rtol=0.05):
        entry["voxel_size"] = [float(v) for v in vox.mean(0)]
    return TrainData(dataset, sampler, c, entry, {"x": norm, "y": norm}, None)
