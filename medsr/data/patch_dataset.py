"""Brain patches from prepared subjects: the 3D training data (``data.type: patches3d``).

Every training subject's ``lr_up`` (network input x) and ``hr`` (target y) are loaded once,
normalised with per-channel statistics over the training brain voxels, and kept in memory
(DataLoader workers share them copy-on-write). A patch is a slice of those arrays, so drawing
one costs a ~300 kB copy: the loader outruns the model by orders of magnitude
(``medsr bench loader``).

Positions: the non-overlapping (or ``stride``) grid of ``medsr.patches`` filtered by the brain
rule (>= 1 % mask voxels, the paper's about 112 patches per HCP volume), and/or random
positions drawn per epoch around random brain voxels and held to the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.data.augment import PERMUTATIONS, flip_axes_from_bits, symmetry_mask, symmetry_normalised
from medsr.data.registry import TrainData, register_dataset
from medsr.data.sampler import EpochBatchSampler, Item
from medsr.normalise import ChannelStats, brain_stats
from medsr.patches import brain_patch_origins


# (axis permutation, flipped axes) applied to a patch.
Symmetry = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass
class Subject:
    """One prepared subject in memory.

    Attributes:
        name: subject id (manifest ``subject``).
        x: (C, X, Y, Z) float32 network input (``lr_up``), normalised.
        y: (C, X, Y, Z) float32 target (``hr``), normalised.
        mask: (X, Y, Z) bool brain mask.
        affine: 4x4 HR voxel-to-world affine.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def load_subjects(manifest: str | Path, subjects: list[str] | None = None) -> tuple[list[Subject], dict[str, Any]]:
    """Load the ``ok`` subjects of a manifest (optionally a named subset), unnormalised.

    Returns:
        (subjects, info) with info = {"factor", "kind", "channels", "manifest"}.

    Raises:
        FileNotFoundError: the manifest or a file it names is missing (subject and file named).
        ValueError: unknown subject names, mismatched grids/channels, non-finite values.
    """
    from medsr.io import load_mask, load_volume
    from medsr.manifest import read_manifest

    manifest = Path(manifest)
    df = read_manifest(manifest)
    if subjects is not None:
        known = set(df["subject"])
        missing = [s for s in subjects if s not in known]
        if missing:
            raise ValueError(
                f"config key 'data.subjects': {', '.join(missing)} not among the ok subjects of {manifest} "
                f"({', '.join(sorted(known)) or 'none'})"
            )
        df = df[df["subject"].isin(subjects)]
    if len(df) == 0:
        raise ValueError(f"{manifest}: no subject with status ok to train on")
    factors = sorted(set(int(f) for f in df["factor"]))
    kinds = sorted(set(str(k) for k in df["kind"]))
    if len(factors) > 1 or len(kinds) > 1:
        raise ValueError(f"{manifest}: subjects mix factors {factors} / kinds {kinds}; train on one kind and factor")
    out: list[Subject] = []
    channels = None
    for row in df.itertuples(index=False):
        hr = load_volume(row.hr, name=f"subject {row.subject}: {row.hr}")
        lr_up = load_volume(row.lr_up, name=f"subject {row.subject}: {row.lr_up}")
        hr.check_same_space(lr_up)
        if hr.channels != lr_up.channels:
            raise ValueError(f"subject {row.subject}: hr has {hr.channels} channels, lr_up {lr_up.channels}")
        if channels is None:
            channels = hr.channels
        elif hr.channels != channels:
            raise ValueError(f"subject {row.subject}: {hr.channels} channels, other subjects have {channels}")
        mask = load_mask(row.mask, like=hr)
        for vol, what in ((hr, row.hr), (lr_up, row.lr_up)):
            if not np.isfinite(vol.data).all():
                raise ValueError(f"subject {row.subject}: {what} contains NaN or infinite values")
        out.append(Subject(str(row.subject), lr_up.data, hr.data, mask, hr.affine))
    info = {"factor": factors[0], "kind": kinds[0], "channels": int(channels or 0), "manifest": str(manifest)}
    return out, info


class PatchDataset(torch.utils.data.Dataset):
    """Co-located (paired) or independent (unpaired) 3D patches of normalised subjects.

    Items come from :class:`EpochBatchSampler`: ``(ix, iy, seed_x, seed_y)``. Item indices below
    ``n_grid`` are brain-grid patches; the next ``random_per_subject * n_subjects`` are random
    positions, drawn from the item's seed. With ``flip`` a seed also picks axis flips, with
    ``permute`` an axis permutation (DTI components moved and signs corrected accordingly).

    Args:
        subjects: normalised subjects.
        patch_size: patch edge s.
        stride: grid stride (None = s).
        sampling: ``grid``, ``random`` or ``both``.
        random_per_subject: random positions per subject per epoch.
        min_fraction: minimum brain fraction of a kept patch.
        flip: random flip augmentation.
        permute: random axis permutation augmentation (for isotropic voxels).
        dti: the channels are FSL-ordered tensors (flips change off-diagonal signs).
        norm_x, norm_y: statistics the subjects were normalised with (needed by DTI flips).
        align: patch origins are multiples of this (``data.factor``), so every patch starts on an LR
            block boundary: LR-grid models recover the LR voxels from ``lr_up`` exactly, and every
            model sees the blocks in one phase, as whole-volume inference does.
        with_mask: also return the brain mask of paired patches (for ``train.loss_region: brain``).

    ``dataset[item]`` returns ``{"x": (C, s, s, s), "y": (C, s, s, s)}`` float32 tensors, and with
    ``with_mask`` a paired item adds ``"mask"``: (1, s, s, s) float32 in {0, 1}.
    """

    def __init__(self, subjects: list[Subject], patch_size: int = 24, stride: int | None = None,
                 sampling: str = "grid", random_per_subject: int = 0, min_fraction: float = 0.01,
                 flip: bool = False, dti: bool = False, norm_x: ChannelStats | None = None,
                 norm_y: ChannelStats | None = None, align: int = 1, with_mask: bool = False,
                 permute: bool = False) -> None:
        self.subjects = subjects
        self.with_mask = bool(with_mask)
        self.align = max(int(align), 1)
        self.size = int(patch_size)
        self.min_fraction = float(min_fraction)
        self.flip = bool(flip)
        self.permute = bool(permute)
        self.dti = bool(dti)
        c = subjects[0].x.shape[0]
        self.norm_x = norm_x or ChannelStats.identity(c)
        self.norm_y = norm_y or ChannelStats.identity(c)
        empty: list[str] = []
        grid: list[np.ndarray] = []
        for si, s in enumerate(subjects):
            if any(d < self.size for d in s.mask.shape):
                raise ValueError(f"subject {s.name}: volume {s.mask.shape} is smaller than a {self.size}^3 patch")
            origins = brain_patch_origins(s.mask, self.size, stride, self.min_fraction)
            origins = np.unique(origins // self.align * self.align, axis=0) if len(origins) else origins
            if sampling in ("grid", "both") and len(origins) == 0 or not s.mask.any():
                empty.append(s.name)
            grid.append(np.concatenate([np.full((len(origins), 1), si), origins], 1))
        if empty:
            raise ValueError(
                f"subject(s) {', '.join(empty)}: the brain mask yields no {self.size}^3 patch with >= "
                f"{self.min_fraction:.2%} brain voxels (check the mask or lower data.min_brain_fraction)"
            )
        self.grid = np.concatenate(grid, 0).astype(np.int64) if sampling in ("grid", "both") else np.zeros((0, 4), np.int64)
        self.n_random = int(random_per_subject) * len(subjects) if sampling in ("random", "both") else 0
        if sampling == "random" and self.n_random == 0:
            raise ValueError("config key 'data.random_per_subject' must be > 0 when data.sampling is 'random'")
        # Brain voxel coordinates per subject: random patch centres are drawn among them.
        self._brain = [np.argwhere(s.mask).astype(np.int32) for s in subjects] if self.n_random else []

    def __len__(self) -> int:
        return len(self.grid) + self.n_random

    @property
    def n_grid(self) -> int:
        return len(self.grid)

    def position(self, item: int, seed: int) -> tuple[int, np.ndarray]:
        """(subject index, origin (3,)) of ``item`` (random items drawn from ``seed``)."""
        if item < len(self.grid):
            row = self.grid[item]
            return int(row[0]), row[1:]
        k = item - len(self.grid)
        si = k % len(self.subjects)
        rng = np.random.default_rng([seed, 1])
        mask = self.subjects[si].mask
        shape, n = np.asarray(mask.shape), self.size
        best = None
        for _ in range(16):  # rejection sampling against the brain rule
            centre = self._brain[si][rng.integers(len(self._brain[si]))]
            origin = np.clip(centre - n // 2, 0, shape - n) // self.align * self.align
            # One patch: count its voxels directly (patch_fractions builds a whole-volume summed
            # table per call, ~0.1 s on an HCP mask, which would dominate the loader).
            o = origin
            if mask[o[0]:o[0] + n, o[1]:o[1] + n, o[2]:o[2] + n].mean() >= self.min_fraction:
                return si, origin
            best = origin if best is None else best
        return si, best  # type: ignore[return-value]

    def _patch(self, vol: np.ndarray, origin: np.ndarray, sym: Symmetry, stats: ChannelStats) -> torch.Tensor:
        s = self.size
        o = origin
        patch = vol[:, o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s]
        perm, axes = sym
        if axes or perm != PERMUTATIONS[0]:
            patch = symmetry_normalised(patch, perm, axes, self.dti, np.asarray(stats.mean), np.asarray(stats.std))
        return torch.from_numpy(np.ascontiguousarray(patch))

    def _symmetry(self, seed: int) -> Symmetry:
        """(axis permutation, flipped axes) of an item, a pure function of its seed."""
        bits = int(np.random.default_rng([seed, 2]).integers(0, 8)) if self.flip else 0
        perm = PERMUTATIONS[int(np.random.default_rng([seed, 3]).integers(0, 6))] if self.permute else PERMUTATIONS[0]
        return perm, flip_axes_from_bits(bits)

    def __getitem__(self, item: Item) -> dict[str, torch.Tensor]:
        if isinstance(item, (int, np.integer)):
            item = (int(item), int(item), 0, 0)
        ix, iy, sx, sy = item
        si, ox = self.position(ix, sx)
        x = self._patch(self.subjects[si].x, ox, self._symmetry(sx), self.norm_x)
        if ix == iy and sx == sy:
            y = self._patch(self.subjects[si].y, ox, self._symmetry(sx), self.norm_y)
            if self.with_mask:
                return {"x": x, "y": y, "mask": self._mask_patch(si, ox, self._symmetry(sx))}
        else:
            sj, oy = self.position(iy, sy)
            y = self._patch(self.subjects[sj].y, oy, self._symmetry(sy), self.norm_y)
        return {"x": x, "y": y}

    def _mask_patch(self, si: int, origin: np.ndarray, sym: Symmetry) -> torch.Tensor:
        s, o = self.size, origin
        m = symmetry_mask(self.subjects[si].mask[o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s], *sym)
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)[None])


def _preview(subject: Subject, norm_x: ChannelStats, norm_y: ChannelStats, kind: str, crop: int = 64):
    """A preview function: axial slice through a central crop (input, output, HR), original units."""
    mask = subject.mask
    idx = np.argwhere(mask)
    centre = ((idx.min(0) + idx.max(0)) // 2) if len(idx) else np.asarray(mask.shape) // 2
    shape = np.asarray(mask.shape)
    size = np.minimum(np.array([crop, crop, 16]), shape)
    o = np.clip(centre - size // 2, 0, shape - size)
    sl = (slice(None),) + tuple(slice(int(a), int(a + b)) for a, b in zip(o, size))

    def scalar(v: np.ndarray) -> np.ndarray:
        # DTI: mean diffusivity (trace / 3) is the map a reader recognises; scalar: channel 0.
        return (v[0] + v[3] + v[5]) / 3.0 if kind == "dti" and v.shape[0] == 6 else v[0]

    def preview(model: torch.nn.Module, device: torch.device) -> list[tuple[str, np.ndarray]]:
        x = torch.from_numpy(np.ascontiguousarray(subject.x[sl]))[None].to(device)
        with torch.no_grad():
            out = model(x)[0].float().cpu().numpy()
        z = int(size[2]) // 2
        xin = norm_x.denormalise(subject.x[sl])
        yhr = norm_y.denormalise(subject.y[sl])
        yout = norm_y.denormalise(out)
        # "name: quantity (unit)" titles: medsr.figures.preview puts the quantity on the colour bar.
        scale, what = 1.0, "intensity (image units)"
        if kind == "dti" and subject.x.shape[0] == 6:
            from medsr.figures.maps import md_units

            md = scalar(yhr)
            scale, unit = md_units(float(np.median(md[md != 0])) if (md != 0).any() else 0.0)
            what = f"MD ({unit})"
        return [(f"LR input: {what}", scale * scalar(xin)[:, :, z]), (f"output: {what}", scale * scalar(yout)[:, :, z]),
                (f"HR: {what}", scale * scalar(yhr)[:, :, z])]

    return preview


@register_dataset("patches3d")
def build_patches3d(cfg: Any, dist: Any) -> TrainData:
    """Builder for ``data.type: patches3d`` (reads ``data.manifest``)."""
    d = cfg.data
    if not d.manifest:
        raise ValueError("config key 'data.manifest' is required for data.type 'patches3d' (a manifest.csv from 'medsr prep')")
    subjects, info = load_subjects(d.manifest, d.subjects)
    c = info["channels"]
    if d.permute:
        for s in subjects:  # a permuted patch of anisotropic voxels would show anatomy at a wrong scale
            vox = np.linalg.norm(s.affine[:3, :3], axis=0)
            if vox.max() > 1.05 * vox.min():
                raise ValueError(f"config key 'data.permute': subject {s.name} has anisotropic voxels "
                                 f"({' x '.join(f'{v:.3g}' for v in vox)} mm); permute only isotropic data")
    if d.normalise:
        norm_y = brain_stats((s.y, s.mask) for s in subjects)
        norm_x = norm_y if d.norm_stats == "shared" else brain_stats((s.x, s.mask) for s in subjects)
    else:
        norm_x, norm_y = ChannelStats.identity(c), ChannelStats.identity(c)
    for s in subjects:  # normalise once; patches are then plain slices (normalise keeps float32: no extra copy)
        s.x = norm_x.normalise(s.x).astype(np.float32, copy=False)
        s.y = norm_y.normalise(s.y).astype(np.float32, copy=False)
    dataset = PatchDataset(
        subjects, d.patch_size, d.stride, d.sampling, d.random_per_subject, d.min_brain_fraction,
        d.flip, info["kind"] == "dti" and c == 6, norm_x, norm_y, align=int(info["factor"]),
        with_mask=cfg.train.loss_region == "brain", permute=d.permute,
    )
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size,
                                unpaired=cfg.train.mode == "unpaired")
    entry = {"factor": int(info["factor"]), "patch_size": int(d.patch_size), "channels": int(c), "kind": info["kind"],
             "subjects": [s.name for s in subjects], "n_patches": int(dataset.n_grid)}
    # The training HR voxel size lets inference tell an LR-grid input from an HR-grid one by its
    # geometry instead of its file name; stored only when the training subjects agree on it.
    sizes = np.array([np.linalg.norm(s.affine[:3, :3], axis=0) for s in subjects])
    if np.allclose(sizes, sizes[0], rtol=0.05):
        entry["voxel_size"] = [float(v) for v in sizes.mean(0)]
    return TrainData(dataset, sampler, c, entry, {"x": norm_x, "y": norm_y},
                     _preview(subjects[0], norm_x, norm_y, info["kind"]))
