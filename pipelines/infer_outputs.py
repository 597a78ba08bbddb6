"""What ``medsr infer`` writes beside each prediction, and the checks before it runs.

* **Names** (:class:`ItemOutputs`): outside BIDS, next to ``<out>.nii.gz`` go ``<out>_std.nii.gz``
  (``--uncertainty``) and ``<out>_FA.nii.gz`` ... (``--maps``, :func:`pipelines.maps.map_paths`); in a BIDS
  derivatives folder the names of :mod:`pipelines.bids_derivatives`, each with a JSON sidecar.
* **Mask** (``--mask``): a file on the output's grid (or the input's LR grid, NN-upsampled), or without a
  file the manifest's ``mask`` column; the prediction, its std and its maps are 0 outside it.
* **Domain** (:func:`check_domain`): one warning line per way an input lies outside the model card
  (:func:`medsr.model_card.domain_warnings`); ``--strict`` refuses instead, and a channel count the model
  cannot run on is always refused.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from medsr.degrade import hr_affine, nn_upsample_array
from medsr.inference import detect_grid
from medsr.io import load_mask, load_volume, save_volume
from medsr.factor import factor_triple
from medsr.model_card import domain_warnings
from medsr.utils.atomic import atomic_path
from medsr.volume import Volume
from pipelines.maps import map_paths, strip_nifti, write_maps

MASK_FROM_MANIFEST = "manifest"


@dataclass
class ItemOutputs:
    """The files of one input: the prediction, its std, its maps, and JSON sidecars (BIDS) per file."""

    main: Path
    std: Path | None = None
    maps: dict[str, Path] = field(default_factory=dict)
    sidecars: dict[Path, dict[str, Any]] = field(default_factory=dict)  # image path -> its sidecar content

    def paths(self) -> list[Path]:
        """Every file this input writes (images, then sidecars)."""
        images = [self.main] + ([self.std] if self.std else []) + list(self.maps.values())
        return images + [sidecar_path(p) for p in images if p in self.sidecars]


def sidecar_path(image: Path) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    stem = strip_nifti(image)
    return stem.with_name(stem.name + ".json")


def plain_outputs(out: Path, maps: Sequence[str], uncertainty: bool) -> ItemOutputs:
    """Outside BIDS: ``<out>``, ``<stem>_std.nii.gz``, ``<stem>_<MAP>.nii.gz``."""
    stem = strip_nifti(out)
    std = stem.with_name(f"{stem.name}_std.nii.gz") if uncertainty else None
    return ItemOutputs(Path(out), std, map_paths(stem, maps))


def check_domain(predictor, vol: Volume, grid: str, *, reverse: bool, strict: bool, where: str) -> None:
    """Warn (stderr, one line each) or, with ``strict``, refuse an input outside the model card."""
    if grid == "auto":
        grid = "hr" if reverse else detect_grid(vol, predictor.factor, predictor.train_voxel_size, where)
    problems = domain_warnings(predictor.card, vol, grid, reverse=reverse)
    channels = predictor.card.get("channels")
    if problems and (strict or (channels is not None and vol.channels != int(channels))):
        why = "" if not strict else " (--strict refuses inputs outside the model card; see 'medsr info CHECKPOINT')"
        raise ValueError(f"{where}: {problems[0]}{why}")
    for p in problems:
        tqdm.write(f"medsr infer: warning: {where}: {p} (--strict refuses)", file=sys.stderr)


def item_mask(spec: str | None, manifest_mask: str | None, pred: Volume, vol: Volume, factor: Any,
              where: str) -> np.ndarray | None:
    """The (X, Y, Z) bool mask on the prediction's grid for ``--mask`` (``spec``), or None.

    ``spec`` is a file (on the output grid, or on the LR grid of an LR input: NN-upsampled) or
    :data:`MASK_FROM_MANIFEST` (the manifest row's mask, ``manifest_mask``).
    """
    if spec is None:
        return None
    path = manifest_mask if spec == MASK_FROM_MANIFEST else spec
    if not path:
        raise ValueError(f"{where}: --mask without a file takes the manifest's mask, but this input has none")
    m = load_volume(path)
    if m.spatial_shape == pred.spatial_shape and np.allclose(m.affine, pred.affine, atol=1e-3):
        return load_mask(path, pred)
    f = factor_triple(factor)
    if m.spatial_shape == vol.spatial_shape and f[0] == f[1] == f[2] and \
            np.allclose(hr_affine(m.affine, f[0]), pred.affine, atol=1e-3):
        return nn_upsample_array(load_mask(path, vol)[None].astype(np.float32), f[0])[0] > 0
    raise ValueError(f"{path}: the mask's grid {m.spatial_shape} is neither the output's {pred.spatial_shape} "
                     f"nor the input's {vol.spatial_shape} (shape and affine)")


def write_item(outputs: ItemOutputs, pred: Volume, std: Volume | None, mask: np.ndarray | None, *,
               overwrite: bool) -> None:
    """Write std, maps and sidecars, then the prediction last (its presence means the set is complete)."""
    if mask is not None:
        pred = pred.with_data(pred.data * mask[None])
        std = std.with_data(std.data * mask[None]) if std is not None else None
    if std is not None and outputs.std is not None:
        save_volume(std, outputs.std, overwrite=overwrite)
    if outputs.maps:
        write_maps(pred, outputs.maps, mask=mask, overwrite=overwrite)
    for image, content in outputs.sidecars.items():
        with atomic_path(sidecar_path(image), overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps(content, indent=2) + "\n")
    save_volume(pred, outputs.main, overwrite=overwrite)
