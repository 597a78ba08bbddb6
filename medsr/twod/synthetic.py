"""Small generated Maps- and Cityscapes-like datasets in the pix2pix aligned format.

For tests, quick configs and demos without the real archives (nothing is downloaded). Each scene
is drawn from random rectangles, then rendered twice: once as the "label-like" side and once as
the "photo-like" side (per-class colour, shading and noise), so A and B carry the same layout and
a translation model has something real to learn:

* ``cityscapes``: A = photo-like street scene, B = exact Cityscapes train-id colours
  (sky, building, vegetation, road, sidewalk, car, person, ...);
* ``maps``: A = aerial-like (textured blocks, grey roads, green parks, blue water), B = map-like
  (flat map colours for the same classes, white roads).

Files are written as ``ROOT/{train,val}/NNNN.png`` (or ``.jpg``), each ``2*size x size``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsr.twod.cityscapes import TRAIN_COLOURS

__all__ = ["make_aligned_dataset", "random_layout"]

# Classes drawn in the Cityscapes-like scenes (train ids) and their "photo" colours.
_CITY_CLASSES = {0: (90, 80, 90), 1: (150, 140, 140), 2: (110, 100, 90), 8: (60, 100, 40),
                 10: (170, 200, 230), 13: (30, 30, 60), 11: (140, 60, 50), 5: (120, 120, 120)}
# Maps classes: 0 land, 1 road, 2 park, 3 water; (aerial colour, map colour).
_MAP_CLASSES = {0: ((120, 110, 100), (236, 232, 226)), 1: ((90, 90, 90), (255, 255, 255)),
                2: ((50, 90, 40), (200, 230, 190)), 3: ((40, 60, 90), (170, 210, 240))}


def random_layout(size: int, dataset: str, rng: np.random.Generator) -> np.ndarray:
    """A ``(size, size)`` int map of class ids for one scene."""
    lab = np.zeros((size, size), dtype=np.int64)
    if dataset == "cityscapes":
        horizon = int(size * rng.uniform(0.3, 0.5))
        lab[:horizon] = 10  # sky
        lab[horizon:] = 0  # road
        for _ in range(rng.integers(2, 5)):  # buildings / vegetation along the horizon
            x0 = rng.integers(0, size - 4)
            w = rng.integers(size // 8, size // 3)
            top = rng.integers(size // 10, horizon)
            lab[top : horizon + size // 10, x0 : x0 + w] = rng.choice([2, 8])
        lab[horizon + size // 10 : horizon + size // 5, :] = 1  # sidewalk band
        for _ in range(rng.integers(1, 4)):  # cars, a person, a pole
            y0 = rng.integers(horizon + size // 5, size - 3)
            x0 = rng.integers(0, size - 6)
            lab[y0 : y0 + size // 10 + 2, x0 : x0 + size // 6 + 2] = rng.choice([13, 13, 11, 5])
        return lab
    if dataset == "maps":
        for _ in range(rng.integers(1, 3)):
            y0, x0 = rng.integers(0, size - 8, size=2)
            h, w = rng.integers(size // 6, size // 2, size=2)
            lab[y0 : y0 + h, x0 : x0 + w] = rng.choice([2, 3])
        for _ in range(rng.integers(2, 5)):  # straight roads
            pos = rng.integers(0, size - 3)
            width = max(2, size // 24)
            if rng.random() < 0.5:
                lab[pos : pos + width, :] = 1
            else:
                lab[:, pos : pos + width] = 1
        return lab
    raise ValueError(f"unknown dataset {dataset!r}; choose 'cityscapes' or 'maps'")


def _render(lab: np.ndarray, dataset: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) uint8 ``(size, size, 3)`` images of one layout."""
    size = lab.shape[0]
    a = np.zeros((size, size, 3), dtype=np.float64)
    b = np.zeros((size, size, 3), dtype=np.float64)
    if dataset == "cityscapes":
        for c, photo in _CITY_CLASSES.items():
            m = lab == c
            a[m] = photo
            b[m] = TRAIN_COLOURS[c]
        shade = np.linspace(1.15, 0.85, size)[:, None, None]  # light from the top
        a = a * shade + rng.normal(0, 8, a.shape)
    else:
        for c, (aerial, mp) in _MAP_CLASSES.items():
            m = lab == c
            a[m] = aerial
            b[m] = mp
        a = a + rng.normal(0, 12, a.shape) * (lab != 1)[..., None]  # textured ground, smooth roads
    return np.clip(a, 0, 255).astype(np.uint8), np.clip(b, 0, 255).astype(np.uint8)


def make_aligned_dataset(
    root: str | os.PathLike,
    dataset: str = "maps",
    n_train: int = 8,
    n_val: int = 4,
    size: int = 64,
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """Write ``n_train`` / ``n_val`` aligned A|B images under ``root/train`` and ``root/val``.

    Args:
        root: output folder (created).
        dataset: ``"maps"`` or ``"cityscapes"``.
        size: side of each half in pixels (files are ``2*size x size``).
        suffix: ``.png`` (lossless) or ``.jpg`` (like the public archives).

    Returns:
        ``root`` as a Path.
    """
    from PIL import Image

    from medsr.utils.atomic import atomic_path

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a, b = _render(random_layout(size, dataset, rng), dataset, rng)
            image = Image.fromarray(np.concatenate([a, b], axis=1))
            with atomic_path(root / split / f"{i:04d}{suffix}") as tmp:
                # quality only matters for JPEG; PNG ignores it.
                image.save(tmp, quality=95)
    return root


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m medsr.twod.synthetic",
                                description="write a small generated Maps- or Cityscapes-like aligned dataset")
    p.add_argument("root", type=Path, help="output folder (train/ and val/ are created)")
    p.add_argument("--dataset", choices=["maps", "cityscapes"], default="maps")
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-val", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="side of each half in px (files are 2*size x size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jpg", action="store_true", help="write JPEG like the public archives (default PNG)")
    a = p.parse_args(argv)
    make_aligned_dataset(a.root, a.dataset, a.n_train, a.n_val, a.size, a.seed, ".jpg" if a.jpg else ".png")
    print(f"wrote {a.n_train} train + {a.n_val} val {a.dataset} images to {a.root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
