"""The pix2pix "aligned" image format: one file holds A and B side by side.

Layout of a dataset root, as the public pix2pix archives ship it::

    ROOT/train/*.jpg      each image is [ A | B ], width = 2 x height
    ROOT/val/*.jpg

* Cityscapes (``cityscapes.tar.gz``): A = street photo, B = label colours, 512x256 per file;
* Maps (``maps.tar.gz``): A = aerial photo, B = Google map, 1200x600 per file.

Each half is resized to ``size x size`` (128 for Cityscapes, 256 for Maps in the paper) and scaled
to [-1, 1] as a float32 ``(3, size, size)`` tensor. Label-colour halves are resized with nearest
neighbour so no new colours appear between classes; photos and maps use bicubic.

Training and evaluation read these files through one dataset,
:class:`medsr.twod.datasets.AlignedItems` (paired, unpaired and segmentation items).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASET_SIZES",
    "IMAGE_SUFFIXES",
    "dataset_from_folder",
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


def dataset_from_folder(root: str | os.PathLike) -> str | None:
    """``maps`` or ``cityscapes`` when a folder name on ``root``'s absolute path contains it (the
    nearest folder wins: ``/data/maps/cityscapes`` is Cityscapes), else None."""
    for part in reversed(Path(root).resolve().parts):
        for d in DATASET_SIZES:
            if d in part.lower():
                return d
    return None


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
