"""The pix2pix "aligned" image format: one file holds A and B side by side.

Layout of a dataset root, as the public pix2pix archives ship it::

    ROOT/train/*.jpg      each image is [ A | B ], width = 2 x height
    ROOT/val/*.jpg

* Cityscapes (``cityscapes.tar.gz``): A = street photo, B = label colours, 512x256 per file;
* Maps (``maps.tar.gz``): A = aerial photo, B = Google map, 1200x600 per file.

Each half is resized to ``size x size`` (128 for Cityscapes, 256 for Maps in the paper) and scaled
to [-1, 1] as a float32 ``(3, size, size)`` tensor. Label-colour halves are resized with nearest
neighbour so no new colours appear between classes; photos and maps use bicubic.

Three views of one folder:

* :class:`AlignedPairs` - ``{"x": A, "y": B}`` from the same file (pix2pix, paired RevGAN);
* :class:`AlignedUnpaired` - A and B drawn through two independent permutations, reshuffled by
  :meth:`AlignedUnpaired.set_epoch` (CycleGAN, unpaired RevGAN);
* :class:`AlignedSegmentation` - ``{"x": photo, "y": train ids (size, size) int64}`` for the
  Cityscapes segmentation network behind the FCN-score.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DATASET_SIZES",
    "IMAGE_SUFFIXES",
    "AlignedPairs",
    "AlignedSegmentation",
    "AlignedUnpaired",
    "list_images",
    "read_aligned",
    "to_tensor",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# The paper's image size per dataset; any other size can be configured.
DATASET_SIZES = {"cityscapes": 128, "maps": 256}


def _pil():
    # PIL is a dependency of matplotlib; import it late so `import medsr` stays light.
    from PIL import Image

    return Image


def list_images(root: str | os.PathLike, split: str) -> list[Path]:
    """Sorted image files of ``root/split``; a clear error when the folder is missing or empty."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no '{split}' folder (expected ROOT/train and ROOT/val of A|B images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_aligned(
    path: str | os.PathLike, size: int | None, label_b: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read one A|B file and return both halves resized.

    Args:
        path: image file whose width is twice its height.
        size: output side in pixels, or None to keep each half's native size.
        label_b: B holds label colours: resize it with nearest neighbour.

    Returns:
        (A, B), each ``(size, size, 3)`` uint8 RGB.

    Raises:
        ValueError: naming the file, when it cannot be decoded or is not two squares side by side.
    """
    Image = _pil()
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types; re-raised with the file named
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w != 2 * h:
        raise ValueError(
            f"{path}: expected A and B side by side (width = 2 x height), got {w}x{h} pixels"
        )
    a = im.crop((0, 0, h, h))
    b = im.crop((h, 0, w, h))
    if size is not None and size != h:
        a = a.resize((size, size), Image.BICUBIC)
        b = b.resize((size, size), Image.NEAREST if label_b else Image.BICUBIC)
    return np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


@dataclass
class _Folder:
    """Shared settings of the three views."""

    root: Path
    split: str
    size: int | None
    label_b: bool
    flip: bool
    seed: int

    @classmethod
    def make(
        cls,
        root: str | os.PathLike,
        split: str = "train",
        size: int | None = None,
        dataset: str = "maps",
        flip: bool = False,
        seed: int = 0,
    ) -> "_Folder":
        if dataset not in DATASET_SIZES:
            raise ValueError(f"unknown 2D dataset {dataset!r}; choose from {', '.join(DATASET_SIZES)}")
        if size is not None and int(size) < 8:
            raise ValueError(f"image size {size} too small (at least 8 px)")
        return cls(Path(root), split, None if size is None else int(size), dataset == "cityscapes", flip, seed)


class _AlignedBase(Dataset):
    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        size: int | None = None,
        dataset: str = "maps",
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        self.cfg = _Folder.make(root, split, size, dataset, flip, seed)
        self.files = list_images(self.cfg.root, split)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the per-epoch randomness (flips, unpaired shuffles); call before each epoch."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        # Randomness keyed on (seed, epoch, index): identical in every worker and after a resume.
        return np.random.default_rng([self.cfg.seed, self.epoch, index])

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_aligned(self.files[index], self.cfg.size, self.cfg.label_b)

    def __len__(self) -> int:
        return len(self.files)


class AlignedPairs(_AlignedBase):
    """Paired view: item i = ``{"x": A_i, "y": B_i, "name": str}``, tensors ``(3, S, S)`` in [-1, 1]."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        a, b = self._read(index)
        if self.cfg.flip and self._rng(index).random() < 0.5:
            # The same flip on both halves keeps the pair aligned.
            a, b = a[:, ::-1], b[:, ::-1]
        return {"x": to_tensor(a), "y": to_tensor(b), "name": self.files[index].stem}


class AlignedUnpaired(_AlignedBase):
    """Unpaired view: A and B come through two independent permutations of the files.

    Item i = ``{"x": A_{p(i)}, "y": B_{q(i)}}`` with p, q fresh permutations each epoch, so the
    model never sees which B belongs to which A (two file decodes per item).
    """

    def _perms(self) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "_perm_epoch", None) != self.epoch:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, 0x5EED])
            self._perm = (rng.permutation(len(self.files)), rng.permutation(len(self.files)))
            self._perm_epoch = self.epoch
        return self._perm

    def __getitem__(self, index: int) -> dict[str, Any]:
        pa, pb = self._perms()
        ia, ib = int(pa[index]), int(pb[index])
        a, _ = self._read(ia)
        _, b = self._read(ib)
        rng = self._rng(index)
        if self.cfg.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        if self.cfg.flip and rng.random() < 0.5:
            b = b[:, ::-1]
        return {"x": to_tensor(a), "y": to_tensor(b), "name": f"{self.files[ia].stem}|{self.files[ib].stem}"}


class AlignedSegmentation(_AlignedBase):
    """Segmentation view of Cityscapes: ``{"x": photo (3, S, S), "y": train ids (S, S) int64}``.

    Ground-truth ids come from the label colours by nearest palette colour (255 = ignore).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int | None = None,
                 dataset: str = "cityscapes", flip: bool = False, seed: int = 0) -> None:
        if dataset != "cityscapes":
            raise ValueError(f"the segmentation view needs Cityscapes label colours, not {dataset!r}")
        super().__init__(root, split, size, dataset, flip, seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from medsr.twod.cityscapes import colours_to_train_ids

        a, b = self._read(index)
        ids = colours_to_train_ids(b)
        if self.cfg.flip and self._rng(index).random() < 0.5:
            a, ids = a[:, ::-1], ids[:, ::-1]
        return {"x": to_tensor(a), "y": torch.from_numpy(np.ascontiguousarray(ids)), "name": self.files[index].stem}
