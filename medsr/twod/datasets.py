"""The ``aligned2d`` dataset builder: pix2pix aligned folders as training data for the shared Trainer.

Registered in :mod:`medsr.data.registry` (which imports this module on first use), selected by
``data.type: aligned2d``. Config keys used: ``data.root`` (holding ``train/``), ``data.image_size``,
``data.direction`` (``AtoB``: x = A, y = B; ``BtoA`` swaps them), ``data.flip``; and, when the
config has it, ``data.dataset`` (``maps`` | ``cityscapes``), else the dataset is told by the root
folder's name (``.../cityscapes``), else Maps rules apply (both halves resized bicubic).

Items come from the shared :class:`~medsr.data.sampler.EpochBatchSampler` as
``(ix, iy, seed_x, seed_y)``: x is read from file ``ix`` and y from file ``iy``, so the paired
modes see true pairs (``ix == iy``) and the ``unpaired`` mode sees independent shuffles of A and B.
The ``segmentation`` mode gets ``y`` = Cityscapes train ids ``(S, S)`` int64 (255 = ignore).

Images are already in [-1, 1] (the generators end in tanh), so the normalisation statistics are
the identity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsr.data.registry import TrainData, register_dataset
from medsr.data.sampler import EpochBatchSampler, Item
from medsr.normalise import ChannelStats
from medsr.twod.aligned import DATASET_SIZES, dataset_from_folder, list_images, read_aligned, to_tensor
from medsr.twod.cityscapes import colours_to_train_ids

__all__ = ["AlignedItems", "build_aligned2d", "resolve_dataset"]

SEGMENTATION_MODES = ("segmentation",)


def resolve_dataset(data_cfg: Any) -> tuple[str, str]:
    """``(dataset, source)``: ``maps`` or ``cityscapes`` and how it was told.

    ``data.dataset`` when the config has it (source ``config``), else a folder name on the root's
    path containing ``cityscapes`` or ``maps`` (source ``folder name``), else ``maps`` (source
    ``default``: both halves are then resized bicubic, right for any photo-to-photo pair).
    """
    name = getattr(data_cfg, "dataset", None)
    if name:
        if name not in DATASET_SIZES:
            raise ValueError(f"config key 'data.dataset': {name!r} is not one of {', '.join(DATASET_SIZES)}")
        return str(name), "config"
    guess = dataset_from_folder(data_cfg.root)
    return (guess, "folder name") if guess else ("maps", "default")


class AlignedItems(torch.utils.data.Dataset):
    """Aligned images addressed by sampler items ``(ix, iy, seed_x, seed_y)``.

    Args:
        files: the A|B image files.
        size: side of both halves after resizing.
        label_b: B holds label colours (nearest-neighbour resize).
        swap: ``direction: BtoA``: x is B and y is A.
        flip: random horizontal flips (a pair shares one flip, since paired items share a seed).
        target: ``"image"`` (y in [-1, 1]) or ``"labels"`` (y = train ids, for segmentation).
        with_name: add ``"name"``: the file stem of x (``"stem_x|stem_y"`` for an unpaired item), for
            per-image tables at evaluation (training batches carry tensors only).

    ``dataset[item]`` -> ``{"x": (3, S, S) float32, "y": (3, S, S) float32 or (S, S) int64}``; an
    int ``i`` is the paired, unflipped item ``(i, i, 0, 0)``.
    """

    def __init__(self, files: list[Path], size: int | None, label_b: bool, swap: bool = False,
                 flip: bool = False, target: str = "image", with_name: bool = False) -> None:
        if target not in ("image", "labels"):
            raise ValueError(f"target {target!r}: choose 'image' or 'labels'")
        self.files, self.size, self.label_b = files, size, label_b
        self.swap, self.flip, self.target, self.with_name = swap, flip, target, with_name

    def __len__(self) -> int:
        return len(self.files)

    def _half(self, index: int, want_b: bool) -> np.ndarray:
        a, b = read_aligned(self.files[index], self.size, self.label_b)
        return b if want_b else a

    def _flip(self, img: np.ndarray, seed: int) -> np.ndarray:
        # A pure function of the item's seed: workers and resumed runs flip alike.
        if self.flip and np.random.default_rng(seed).random() < 0.5:
            return np.ascontiguousarray(img[:, ::-1])
        return img

    def __getitem__(self, item: Item | int) -> dict[str, Any]:
        if isinstance(item, (int, np.integer)):
            item = (int(item), int(item), 0, 0)
        ix, iy, sx, sy = item
        if ix == iy:
            a, b = read_aligned(self.files[ix], self.size, self.label_b)
            xs, ys = (b, a) if self.swap else (a, b)
        else:
            xs, ys = self._half(ix, self.swap), self._half(iy, not self.swap)
        xs, ys = self._flip(xs, sx), self._flip(ys, sy)
        if self.target == "labels":
            out = {"x": to_tensor(xs), "y": torch.from_numpy(np.ascontiguousarray(colours_to_train_ids(ys)))}
        else:
            out = {"x": to_tensor(xs), "y": to_tensor(ys)}
        if self.with_name:
            stems = (self.files[ix].stem, self.files[iy].stem)
            out["name"] = stems[0] if ix == iy else "|".join(stems)
        return out


def _preview(ds: AlignedItems, segmentation: bool):
    """Per-epoch PNG: input, output and target of the first training image, RGB in [0, 1]."""

    def upright(img: np.ndarray) -> np.ndarray:
        # The Trainer's PNG rotates each panel by 90 degrees (anterior up for 3D slices);
        # pre-rotating the other way keeps photos upright.
        return np.ascontiguousarray(np.rot90(img, -1))

    def rgb(t: torch.Tensor) -> np.ndarray:
        return upright(((t.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())

    def preview(model: torch.nn.Module, device: torch.device) -> list[tuple[str, np.ndarray]]:
        item = ds[(0, 0, 0, 0)]
        with torch.no_grad():
            out = model(item["x"][None].to(device))[0]
        if segmentation:
            from medsr.twod.cityscapes import train_ids_to_colours

            def colours(ids: torch.Tensor) -> np.ndarray:
                return upright(train_ids_to_colours(ids) / 255.0)

            return [("photo", rgb(item["x"])), ("predicted labels", colours(out.argmax(0))), ("labels", colours(item["y"]))]
        return [("input", rgb(item["x"])), ("output", rgb(out)), ("target", rgb(item["y"]))]

    return preview


@register_dataset("aligned2d")
def build_aligned2d(cfg: Any, dist: Any) -> TrainData:
    """Builder for ``data.type: aligned2d`` (reads ``data.root``/train)."""
    d = cfg.data
    if not d.root:
        raise ValueError("config key 'data.root' is required for data.type 'aligned2d' (a folder holding train/ and val/)")
    dataset, source = resolve_dataset(d)
    segmentation = cfg.train.mode in SEGMENTATION_MODES
    if segmentation and dataset != "cityscapes":
        raise ValueError(f"train.mode {cfg.train.mode!r} needs Cityscapes label colours; {d.root} is read as "
                         f"{dataset!r} (set data.dataset: cityscapes)")
    if segmentation and d.direction != "AtoB":
        raise ValueError("train.mode 'segmentation' segments photos (A): set data.direction to AtoB")
    size = int(d.image_size)
    if size % 4:
        raise ValueError(f"config key 'data.image_size': {size} must be divisible by 4 (two stride-2 convs)")
    files = list_images(d.root, "train")
    # Fail on a bad file now, naming it, rather than at some step mid-epoch.
    read_aligned(files[0], size, dataset == "cityscapes")
    items = AlignedItems(files, size, label_b=dataset == "cityscapes", swap=d.direction == "BtoA", flip=d.flip,
                         target="labels" if segmentation else "image")
    sampler = EpochBatchSampler(len(items), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size,
                                unpaired=cfg.train.mode == "unpaired")
    info = {"kind": "image2d", "dataset": dataset, "dataset_source": source, "image_size": size, "channels": 3,
            "direction": d.direction,
            "root": str(d.root), "n_images": len(items)}
    ident = ChannelStats.identity(3)
    return TrainData(items, sampler, 3, info, {"x": ident, "y": ident}, _preview(items, segmentation))
