"""Brain patches from prepared subjects: the 3D training data (``data.type: patches3d``).

Every training subject's ``lr_up`` (network input x) and ``hr`` (target y) are memory-mapped from
their cache (:mod:`medsr.data.cache`, written on first use), so a process's memory does not grow
with the number of subjects and every process on a node shares one copy of the data through the
OS page cache. A patch is read from the maps and normalised on the way out with per-channel
statistics over the training brain voxels: a ~300 kB read, element for element the arithmetic of
normalising the whole volume first, so patches are bit-identical to in-memory data, and the loader
outruns the model by orders of magnitude (``medsr bench loader``).

Positions: the non-overlapping (or ``stride``) grid of ``medsr.patches`` filtered by the brain
rule (>= 1 % mask voxels, the paper's about 112 patches per HCP volume), and/or random
positions drawn per epoch around random brain voxels and held to the same rule.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.data.augment import (
    PERMUTATIONS, allowed_permutations, flip_axes_from_bits, symmetry_mask, symmetry_normalised,
)
from medsr.data.cache import ARRAYS as CACHE_ARRAYS, CacheEntry, cached_origins, ensure as ensure_cache
from medsr.data.domains import DomainPairs, split_domains
from medsr.data.mapped import MappedGroup
from medsr.data.registry import TrainData, register_dataset
from medsr.data.sampler import EpochBatchSampler, Item
from medsr.factor import factor_triple, factor_value, format_factor
from medsr.model_card import data_card
from medsr.normalise import ChannelStats, stats_from_sums
from medsr.patches import SizeLike, as_shape, brain_patch_origins, format_shape, patch_shape, shape_value


# (axis permutation, flipped axes) applied to a patch.
Symmetry = tuple[tuple[int, ...], tuple[int, ...]]


class Subject:
    """One prepared subject, memory-mapped from its cache (:class:`medsr.data.cache.CacheEntry`).

    Attributes:
        name: subject id (manifest ``subject``).
        entry: its cache (folder, grid, channels, brain sums).
        affine: 4x4 HR voxel-to-world affine.
        norm_x, norm_y: statistics that :meth:`patch` normalises x (``lr_up``) and y (``hr``) with.

    The arrays (``lr_up``, ``hr``: (C, X, Y, Z) float32 raw values; ``mask``: (X, Y, Z) bool;
    ``brain``: (N, 3) int32 brain voxel coordinates) are read-only maps of the cache files, opened on
    first use and closed again when many other subjects have been read since
    (:class:`medsr.data.mapped.MappedGroup`). Pickling (a DataLoader under the spawn or forkserver
    start method) sends the cache paths, never the data.
    """

    def __init__(self, name: str, entry: CacheEntry, norm_x: ChannelStats | None = None,
                 norm_y: ChannelStats | None = None) -> None:
        self.name = name
        self.entry = entry
        self.affine = entry.affine
        self.norm_x = norm_x or ChannelStats.identity(entry.channels)
        self.norm_y = norm_y or ChannelStats.identity(entry.channels)
        self.arrays = MappedGroup({a: entry.path(a) for a in CACHE_ARRAYS}, entry.layouts)

    @property
    def lr_up(self) -> np.ndarray:
        return self.arrays["lr_up"]

    @property
    def hr(self) -> np.ndarray:
        return self.arrays["hr"]

    @property
    def mask(self) -> np.ndarray:
        return self.arrays["mask"]

    @property
    def brain(self) -> np.ndarray:
        return self.arrays["brain"]

    def release(self) -> None:
        """Unmap the pages reads have touched from this process (see :class:`medsr.data.mapped.MappedArray`)."""
        self.arrays.release()

    def read_mask(self) -> np.ndarray:
        """The whole mask as a private in-memory array (for one-off scans that should not keep
        every page of every subject's map resident in this process)."""
        return np.load(self.entry.path("mask"))

    def region(self, key: str, sl: tuple[slice, ...]) -> np.ndarray:
        """Normalised (C, ...) float32 copy of ``[:, *sl]`` of x (``key="x"``) or y (``"y"``)."""
        raw, stats = (self.lr_up, self.norm_x) if key == "x" else (self.hr, self.norm_y)
        mean, std = self._stats_arrays(key, stats)
        # Elementwise (v - mean) / std in float32, as ChannelStats.normalise computes it: the same
        # numbers as normalising the whole volume first.
        out = np.subtract(raw[(slice(None),) + tuple(sl)], mean, dtype=np.float32)
        return np.divide(out, std, out=out)

    def _stats_arrays(self, key: str, stats: ChannelStats) -> tuple[np.ndarray, np.ndarray]:
        """(C, 1, 1, 1) float32 mean and std of ``stats``, made once per statistics object."""
        cached = self.__dict__.setdefault("_stats_cache", {}).get(key)
        if cached is None or cached[0] is not stats:
            shape = (-1, 1, 1, 1)
            cached = (stats, np.asarray(stats.mean, np.float32).reshape(shape),
                      np.asarray(stats.std, np.float32).reshape(shape))
            self._stats_cache[key] = cached
        return cached[1], cached[2]

    def patch(self, key: str, origin: np.ndarray, size: SizeLike) -> np.ndarray:
        """Normalised (C, sx, sy, sz) float32 patch of x or y at ``origin`` (``size``: an edge or a box)."""
        return self.region(key, box_slices(origin, size))

    @property
    def x(self) -> np.ndarray:
        """The whole normalised input (C, X, Y, Z) in memory: a full copy, for tests and small checks."""
        return self.region("x", (slice(None),) * 3)

    @property
    def y(self) -> np.ndarray:
        """The whole normalised target (C, X, Y, Z) in memory: a full copy, for tests and small checks."""
        return self.region("y", (slice(None),) * 3)


def box_slices(origin: np.ndarray, size: SizeLike) -> tuple[slice, slice, slice]:
    """The voxel slices of the ``size`` patch (an edge or a box) starting at ``origin`` (3,)."""
    box = as_shape(size)
    return tuple(slice(int(o), int(o) + e) for o, e in zip(origin, box))  # type: ignore[return-value]


def load_subjects(manifest: str | Path, subjects: list[str] | None = None, rank: int = 0,
                  world_size: int = 1) -> tuple[list[Subject], dict[str, Any]]:
    """Open the ``ok`` subjects of a manifest (optionally a named subset), memory-mapped and unnormalised.

    A subject's cache is built on first use (one subject in memory at a time) and reused afterwards.
    Process ``rank`` of ``world_size`` starts building at its own share of the subjects, so the
    processes of a distributed run build the missing caches side by side instead of queueing on
    one subject's lock after another.

    Returns:
        (subjects, info) with info = {"factor", "kind", "channels", "manifest", "slice_profile"}; ``factor`` in its stored
        form (an int, or a list of three per axis: :func:`medsr.factor.factor_triple` reads either).

    Raises:
        FileNotFoundError: the manifest or a file it names is missing (subject and file named).
        ValueError: unknown subject names, mismatched grids/channels, non-finite values.
    """
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
    lr_only = [str(s) for s, hr in zip(df["subject"], df["hr"]) if not hr]
    if lr_only:
        raise ValueError(f"{manifest}: subject {lr_only[0]} has no HR volume (prepared with --lr-only); train such "
                         "scans with data.type self (configs/self.yaml)")
    factors = sorted(set(factor_triple(f) for f in df["factor"]))
    kinds = sorted(set(str(k) for k in df["kind"]))
    profiles = sorted(set(str(p) for p in df["slice_profile"]))
    if len(profiles) > 1:
        raise ValueError(f"{manifest}: subjects mix slice profiles {profiles}; train on one")
    if len(factors) > 1 or len(kinds) > 1:
        shown = ", ".join(format_factor(f, " ") for f in factors)
        raise ValueError(f"{manifest}: subjects mix factors [{shown}] / kinds {kinds}; train on one kind and factor")
    out: list[Subject] = []
    rows = list(df.itertuples(index=False))
    start = rank * len(rows) // max(world_size, 1)
    entries = {}
    for row in rows[start:] + rows[:start]:
        entries[row.subject] = ensure_cache({"hr": row.hr, "lr_up": row.lr_up, "mask": row.mask}, str(row.subject))
    channels = None
    for row in rows:  # manifest order: the pooled statistics add up subjects in this order
        entry = entries[row.subject]
        if channels is None:
            channels = entry.channels
        elif entry.channels != channels:
            raise ValueError(f"subject {row.subject}: {entry.channels} channels, other subjects have {channels}")
        out.append(Subject(str(row.subject), entry))
    info = {"factor": factor_value(factors[0]), "kind": kinds[0], "channels": int(channels or 0),
            "manifest": str(manifest), "slice_profile": profiles[0]}
    return out, info


class PatchDataset(torch.utils.data.Dataset):
    """Co-located (paired) or independent (unpaired) 3D patches of normalised subjects.

    Items come from :class:`EpochBatchSampler`: ``(ix, iy, seed_x, seed_y)``. Item indices below
    ``n_grid`` are brain-grid patches; the next ``random_per_subject * n_subjects`` are random
    positions, drawn from the item's seed. With ``flip`` a seed also picks axis flips, with
    ``permute`` an axis permutation (DTI components moved and signs corrected accordingly).

    Args:
        subjects: memory-mapped subjects (patches are normalised with their ``norm_x`` / ``norm_y``).
        patch_size: patch edge s, or one per axis (sx, sy, sz) (:func:`medsr.patches.patch_shape`).
        stride: grid stride (None = s).
        sampling: ``grid``, ``random`` or ``both``.
        random_per_subject: random positions per subject per epoch.
        min_fraction: minimum brain fraction of a kept patch.
        flip: random flip augmentation.
        permute: random axis permutation augmentation, among ``permutations``.
        dti: the channels are FSL-ordered tensors (flips change off-diagonal signs).
        norm_x, norm_y: normalisation statistics (default: the subjects' own); set on every subject.
        align: patch origins are multiples of this (``data.factor``: an int or one per axis), so every
            patch starts on an LR block boundary: LR-grid models recover the LR voxels from ``lr_up``
            exactly, and every model sees the blocks in one phase, as whole-volume inference does.
        with_mask: also return the brain mask of paired patches (for ``train.loss_region: brain``).
        permutations: the axis permutations ``permute`` draws from (default all six; thick-slice data
            swap only their alike axes: :func:`medsr.data.augment.allowed_permutations`); of those, only
            the ones that keep a box patch's shape are used (x <-> y of an 8 x 8 x 32 box).

    ``dataset[item]`` returns ``{"x": (C, sx, sy, sz), "y": (C, sx, sy, sz)}`` float32 tensors, and with
    ``with_mask`` a paired item adds ``"mask"``: (1, sx, sy, sz) float32 in {0, 1}, an unpaired one
    ``"mask_x"`` and ``"mask_y"`` (each patch's own).
    """

    def __init__(self, subjects: list[Subject], patch_size: SizeLike = 24, stride: int | None = None,
                 sampling: str = "grid", random_per_subject: int = 0, min_fraction: float = 0.01,
                 flip: bool = False, dti: bool = False, norm_x: ChannelStats | None = None,
                 norm_y: ChannelStats | None = None, align: int | tuple[int, ...] = 1, with_mask: bool = False,
                 permute: bool = False, permutations: tuple[tuple[int, ...], ...] = PERMUTATIONS) -> None:
        self.subjects = subjects
        self.with_mask = bool(with_mask)
        self.align = np.asarray(factor_triple(align), dtype=np.int64)  # per axis
        self.shape = as_shape(patch_size)
        # A permutation must map the patch box onto itself, or a batch would mix shapes.
        self.permutations = tuple(p for p in permutations if all(self.shape[p[i]] == self.shape[i] for i in range(3)))
        self.min_fraction = float(min_fraction)
        self.flip = bool(flip)
        self.permute = bool(permute)
        self.dti = bool(dti)
        self.norm_x = norm_x or subjects[0].norm_x
        self.norm_y = norm_y or subjects[0].norm_y
        for s in subjects:  # one set of statistics for reading and for the DTI symmetries
            s.norm_x, s.norm_y = self.norm_x, self.norm_y
        empty: list[str] = []
        grid: list[np.ndarray] = []
        for si, s in enumerate(subjects):
            if any(d < e for d, e in zip(s.entry.shape, self.shape)):
                raise ValueError(f"subject {s.name}: volume {s.entry.shape} is smaller than a "
                                 f"{format_shape(self.shape)} patch")
            # Saved with the cache after the first scan; the scan reads a private copy of the mask,
            # freed after it (scanning the map would keep every subject's whole mask resident).
            scan = lambda s=s: brain_patch_origins(s.read_mask(), self.shape, stride, self.min_fraction)  # noqa: E731
            origins = cached_origins(s.entry, shape_value(self.shape), stride, self.min_fraction, scan)
            origins = np.unique(origins // self.align * self.align, axis=0) if len(origins) else origins
            if sampling in ("grid", "both") and len(origins) == 0 or s.entry.brain_voxels == 0:
                empty.append(s.name)
            grid.append(np.concatenate([np.full((len(origins), 1), si), origins], 1))
        if empty:
            raise ValueError(
                f"subject(s) {', '.join(empty)}: the brain mask yields no {format_shape(self.shape)} patch with >= "
                f"{self.min_fraction:.2%} brain voxels (check the mask or lower data.min_brain_fraction)"
            )
        self.grid = np.concatenate(grid, 0).astype(np.int64) if sampling in ("grid", "both") else np.zeros((0, 4), np.int64)
        self.n_random = int(random_per_subject) * len(subjects) if sampling in ("random", "both") else 0
        if sampling == "random" and self.n_random == 0:
            raise ValueError("config key 'data.random_per_subject' must be > 0 when data.sampling is 'random'")

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
        shape, n = np.asarray(mask.shape), np.asarray(self.shape)
        best = None
        for _ in range(16):  # rejection sampling against the brain rule
            brain = self.subjects[si].brain  # brain voxel coordinates (N, 3), memory-mapped
            centre = np.asarray(brain[rng.integers(len(brain))])
            origin = np.clip(centre - n // 2, 0, shape - n) // self.align * self.align
            # One patch: count its voxels directly (patch_fractions builds a whole-volume summed
            # table per call, ~0.1 s on an HCP mask, which would dominate the loader).
            if mask[box_slices(origin, self.shape)].mean() >= self.min_fraction:
                return si, origin
            best = origin if best is None else best
        return si, best  # type: ignore[return-value]

    def _patch(self, si: int, key: str, origin: np.ndarray, sym: Symmetry) -> torch.Tensor:
        patch = self.subjects[si].patch(key, origin, self.shape)
        stats = self.norm_x if key == "x" else self.norm_y
        perm, axes = sym
        if axes or perm != PERMUTATIONS[0]:
            patch = symmetry_normalised(patch, perm, axes, self.dti, np.asarray(stats.mean), np.asarray(stats.std))
        return torch.from_numpy(np.ascontiguousarray(patch))

    def _symmetry(self, seed: int) -> Symmetry:
        """(axis permutation, flipped axes) of an item, a pure function of its seed."""
        bits = int(np.random.default_rng([seed, 2]).integers(0, 8)) if self.flip else 0
        perms = self.permutations
        perm = perms[int(np.random.default_rng([seed, 3]).integers(0, len(perms)))] if self.permute else PERMUTATIONS[0]
        return perm, flip_axes_from_bits(bits)

    def __getitem__(self, item: Item) -> dict[str, torch.Tensor]:
        if isinstance(item, (int, np.integer)):
            item = (int(item), int(item), 0, 0)
        ix, iy, sx, sy = item
        if ix != iy or sx != sy:  # unpaired: X and Y from independent draws
            return {**self.side("x", ix, sx), **self.side("y", iy, sy)}
        si, ox = self.position(ix, sx)
        try:
            sym = self._symmetry(sx)  # drawn once: input, target and mask move together
            x = self._patch(si, "x", ox, sym)
            y = self._patch(si, "y", ox, sym)
            if self.with_mask:
                return {"x": x, "y": y, "mask": self._mask_patch(si, ox, sym)}
            return {"x": x, "y": y}
        finally:  # the patches are copies: keep no page of the maps resident in this process
            self.subjects[si].release()

    def side(self, key: str, index: int, seed: int) -> dict[str, torch.Tensor]:
        """One domain's patch of an unpaired item: ``{key: (C, sx, sy, sz)}`` for ``key`` ``x`` (lr_up) or ``y``
        (hr) at item ``index`` drawn from ``seed``, and with ``with_mask`` its brain mask as ``mask_<key>``
        (1, sx, sy, sz)."""
        si, origin = self.position(index, seed)
        try:
            sym = self._symmetry(seed)
            out = {key: self._patch(si, key, origin, sym)}
            if self.with_mask:
                out[f"mask_{key}"] = self._mask_patch(si, origin, sym)
            return out
        finally:
            self.subjects[si].release()

    def _mask_patch(self, si: int, origin: np.ndarray, sym: Symmetry) -> torch.Tensor:
        m = symmetry_mask(self.subjects[si].mask[box_slices(origin, self.shape)], *sym)
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)[None])


def _preview(subject: Subject, norm_x: ChannelStats, norm_y: ChannelStats, kind: str, crop: int = 64,
             factor: tuple[int, int, int] = (1, 1, 1)):
    """A preview function: axial slice through a central crop (input, output, HR), original units.

    The crop starts and ends on LR block boundaries (``factor`` per axis), as every patch does.
    """
    idx = np.asarray(subject.brain)  # the mask's voxel coordinates
    shape = np.asarray(subject.entry.shape)
    r = np.asarray(factor)
    centre = ((idx.min(0) + idx.max(0)) // 2) if len(idx) else shape // 2
    size = np.minimum(np.array([crop, crop, 16]), shape)
    size = np.maximum(size // r, 1) * r
    o = np.clip(centre - size // 2, 0, shape - size) // r * r
    sl = tuple(slice(int(a), int(a + b)) for a, b in zip(o, size))
    dti = kind == "dti" and subject.entry.channels == 6

    def scalar(v: np.ndarray) -> np.ndarray:
        # DTI: mean diffusivity (trace / 3) is the map a reader recognises; scalar: channel 0.
        return (v[0] + v[3] + v[5]) / 3.0 if dti else v[0]

    def preview(model: torch.nn.Module, device: torch.device) -> list[tuple[str, np.ndarray]]:
        xn = subject.region("x", sl)  # a crop read from the maps, normalised
        x = torch.from_numpy(xn)[None].to(device)
        with torch.no_grad():
            out = model(x)[0].float().cpu().numpy()
        z = int(size[2]) // 2
        xin = norm_x.denormalise(xn)
        yhr = norm_y.denormalise(subject.region("y", sl))
        yout = norm_y.denormalise(out)
        # "name: quantity (unit)" titles: medsr.figures.preview puts the quantity on the colour bar.
        scale, what = 1.0, "intensity (image units)"
        if dti:
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
    subjects, info = load_subjects(d.manifest, d.subjects, dist.rank, dist.world_size)
    c = info["channels"]
    factor = factor_triple(info["factor"])
    # A patch tiles whole LR blocks on every axis: a cube's edge is rounded up to a multiple of every
    # factor (16 stays 16 at factors 2, 4 and 1 1 4; it becomes 18 at factor 3), a box's edges each to
    # their axis's factor; auto is the same LR extent on every axis (8 x 8 x 32 at 1 1 4).
    patch_size = patch_shape(d.patch_size, factor)
    if d.patch_size == "auto":  # auto fits the smallest training volume (whole LR blocks), a box that tiles none
        smallest = np.min([s.entry.shape for s in subjects], axis=0)
        fitted = tuple(int(min(e, max(v // r, 1) * r)) for e, v, r in zip(patch_size, smallest, factor))
        if fitted != patch_size and dist.rank == 0:
            print(f"data.patch_size auto: {format_shape(fitted)} instead of {format_shape(patch_size)}, "
                  f"the smallest training volume is {tuple(int(v) for v in smallest)}", file=sys.stderr)
        patch_size = fitted
    elif patch_size != as_shape(d.patch_size) and dist.rank == 0:
        print(f"data.patch_size {d.patch_size} -> {format_shape(patch_size)}: a multiple of the factor "
              f"{format_factor(factor, ' ')} on every axis", file=sys.stderr)
    # A permuted patch must show anatomy at its own scale: only axes of equal voxel size and factor swap.
    vox = np.array([np.linalg.norm(s.affine[:3, :3], axis=0) for s in subjects])
    perms = allowed_permutations(vox, factor)
    if d.permute and len(perms) == 1 and dist.rank == 0:
        print(f"data.permute: no two axes share voxel size and factor ({' x '.join(f'{v:.3g}' for v in vox[0])} mm, "
              f"factor {format_factor(factor, ' ')}); training with flips only", file=sys.stderr)
    # X and Y subjects: the same ones, or (unpaired, data.domains disjoint) two halves that never meet.
    x_subjects, y_subjects = split_domains(subjects, d.domains, cfg.train.mode)
    if d.normalise:  # from the brain sums cached with each subject: no voxel is read again
        norm_y = stats_from_sums(s.entry.sums["hr"] for s in y_subjects)
        norm_x = norm_y if d.norm_stats == "shared" else stats_from_sums(s.entry.sums["lr_up"] for s in x_subjects)
    else:
        norm_x, norm_y = ChannelStats.identity(c), ChannelStats.identity(c)

    def patches(of: list[Subject]) -> PatchDataset:
        return PatchDataset(
            of, patch_size, d.stride, d.sampling, d.random_per_subject, d.min_brain_fraction,
            d.flip, info["kind"] == "dti" and c == 6, norm_x, norm_y, align=factor,
            with_mask=cfg.train.loss_region == "brain", permute=d.permute, permutations=perms,
        )

    if d.domains == "disjoint":
        dataset: Any = DomainPairs(patches(x_subjects), patches(y_subjects))
        n_y: int | None = len(dataset.y)
    else:
        dataset, n_y = patches(subjects), None
    sampler = EpochBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size,
                                unpaired=cfg.train.mode == "unpaired", n_items_y=n_y)
    entry = {"factor": factor_value(factor), "patch_size": shape_value(patch_size), "channels": int(c), "kind": info["kind"],
             "subjects": [s.name for s in subjects], "n_patches": int(dataset.n_grid),
             "flip": bool(d.flip), "permute": bool(d.permute),  # inference's --tta auto follows them
             "slice_profile": info["slice_profile"]}
    if d.domains == "disjoint":
        entry.update(x_subjects=[s.name for s in x_subjects], y_subjects=[s.name for s in y_subjects])
    # The training HR voxel size lets inference tell an LR-grid input from an HR-grid one by its
    # geometry instead of its file name; stored only when the training subjects agree on it.
    if np.allclose(vox, vox[0], rtol=0.05):
        entry["voxel_size"] = [float(v) for v in vox.mean(0)]
    entry.update(data_card(subjects))  # the model card's data facts (medsr info, infer's domain checks)
    return TrainData(dataset, sampler, c, entry, {"x": norm_x, "y": norm_y},
                     _preview(subjects[0], norm_x, norm_y, info["kind"], factor=factor))
