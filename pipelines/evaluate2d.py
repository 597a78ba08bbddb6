"""Evaluate a 2D RevGAN / pix2pix / CycleGAN checkpoint on Maps or Cityscapes (paper Tables 2, 4).

* **Maps** (A = aerial photo, B = map): MAE, PSNR and SSIM on 0-255 in both directions
  (``sat2map`` = A->B = ``model.forward``, ``map2sat`` = B->A = ``model.reverse``).
* **Cityscapes** (A = photo, B = label colours):

  - ``photo2label``: each generated colour is mapped to the nearest of the 19 train-id colours
    (or black = ignore) and scored against the ground-truth labels: per-pixel accuracy, per-class
    accuracy, class IoU (one confusion matrix over the whole split);
  - ``label2photo``: the FCN-score: generated photos are segmented by a segmentation network and
    its labels scored the same way. The paper used a pretrained FCN-8s (Long et al.); this toolkit
    has no pretrained weights and downloads nothing, so the segmenter is the toolkit's own
    ``segnet2d`` trained with ``medsr train configs/2d/segnet_cityscapes.yaml`` on the same training
    split. Its absolute scores therefore differ from the paper's: compare models with each other
    (trends), not with the paper's numbers. The row ``label2photo_real`` segments the *real*
    photos, the ceiling the segmenter allows.

Writes one CSV row per direction (atomically): ``dataset, direction, n_images`` plus the metric
columns (``mae, mae_std, psnr, psnr_std, ssim, ssim_std`` or ``pixel_acc, class_acc, class_iou``),
and optionally a per-image CSV (Maps).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from medsr.checkpoint import load_generator
from medsr.twod import cityscapes as cs
from medsr.twod.aligned import DATASET_SIZES, dataset_from_folder, list_images
from medsr.twod.datasets import AlignedItems
from medsr.twod.metrics import mae, psnr, ssim, to_uint8_range
from medsr.twod.translate import Translator
from medsr.utils.atomic import atomic_path
from medsr.utils.device import resolve_device

DIRECTIONS = {
    "maps": ("sat2map", "map2sat"),
    "cityscapes": ("photo2label", "label2photo"),
}


def infer_dataset(ck: dict[str, Any], root: str | os.PathLike) -> str:
    """``maps`` or ``cityscapes``: the training config's ``data.dataset``, else what the training
    data builder resolved (unless it only fell back to its default), else the data folder's name."""
    cfg_data = ((ck.get("config") or {}).get("data") or {})
    if cfg_data.get("dataset") in DIRECTIONS:
        return cfg_data["dataset"]
    info = ck.get("data") or {}
    if info.get("dataset") in DIRECTIONS and info.get("dataset_source") not in (None, "default"):
        return info["dataset"]
    guess = dataset_from_folder(root)
    if guess is not None:
        return guess
    raise ValueError(f"{root}: cannot tell Maps from Cityscapes; pass --dataset maps|cityscapes")


def _image_size(ck: dict[str, Any], dataset: str, size: int | None) -> int:
    if size is not None:
        return int(size)
    data = (ck.get("config") or {}).get("data", {}) or {}
    return int(data.get("image_size") or DATASET_SIZES[dataset])


def _loader(root: str | os.PathLike, split: str, size: int, dataset: str, batch_size: int, limit: int | None):
    # Paired, unflipped items (int indices) with their file names for the per-image table.
    ds = AlignedItems(list_images(root, split), size, label_b=dataset == "cityscapes", with_name=True)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(int(limit), len(ds))))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


def _summary(dataset: str, direction: str, values: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"dataset": dataset, "direction": direction, "n_images": len(next(iter(values.values())))}
    for k, v in values.items():
        arr = np.asarray(v, dtype=np.float64)
        # PSNR of a pixel-identical image is +inf; the mean is then +inf too, which is the truth.
        row[k] = float(arr.mean()) if arr.size else math.nan
        # The std of a set holding +inf is undefined; leave it NaN rather than invent a number.
        row[f"{k}_std"] = float(arr.std()) if arr.size and np.all(np.isfinite(arr)) else math.nan
    return row


def evaluate_maps(
    tr: Translator, loader: DataLoader, device: torch.device, progress: bool = True
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """MAE / PSNR / SSIM on 0-255 in both directions. Returns (summary rows, per-image table)."""
    per_image = []
    names = DIRECTIONS["maps"]
    scores = {d: {"mae": [], "psnr": [], "ssim": []} for d in names}
    for batch in tqdm(loader, desc="evaluate2d maps", disable=not progress):
        a, b = batch["x"].to(device), batch["y"].to(device)
        outs = {names[0]: (tr.a_to_b(a), b), names[1]: (tr.b_to_a(b), a)}
        for d, (pred, target) in outs.items():
            for i in range(pred.shape[0]):
                p, t = to_uint8_range(pred[i]), to_uint8_range(target[i])
                s = {"mae": mae(p, t), "psnr": psnr(p, t), "ssim": ssim(p, t)}
                for k, v in s.items():
                    scores[d][k].append(v)
                per_image.append({"image": batch["name"][i], "direction": d, **s})
    rows = [_summary("maps", d, scores[d]) for d in names]
    return rows, pd.DataFrame(per_image, columns=["image", "direction", "mae", "psnr", "ssim"])


def _segment(seg: torch.nn.Module, photos: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return seg(photos).argmax(1).cpu().numpy()


def evaluate_cityscapes(
    tr: Translator,
    loader: DataLoader,
    device: torch.device,
    seg: torch.nn.Module | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Segmentation scores of photo->label outputs and, with ``seg``, FCN-scores of label->photo."""
    n = cs.NUM_CLASSES
    conf = {k: np.zeros((n, n + 1), dtype=np.int64) for k in ("photo2label", "label2photo", "label2photo_real")}
    count = 0
    for batch in tqdm(loader, desc="evaluate2d cityscapes", disable=not progress):
        a, b = batch["x"].to(device), batch["y"].to(device)
        labels = tr.a_to_b(a)
        photos = tr.b_to_a(b) if seg is not None else None
        seg_fake = _segment(seg, photos) if seg is not None else None
        seg_real = _segment(seg, a) if seg is not None else None
        for i in range(a.shape[0]):
            gt = cs.colours_to_train_ids(to_uint8_range(b[i]))
            pred = cs.prediction_to_train_ids(to_uint8_range(labels[i]))
            conf["photo2label"] += cs.confusion_matrix(gt, pred)
            if seg is not None:
                conf["label2photo"] += cs.confusion_matrix(gt, seg_fake[i])
                conf["label2photo_real"] += cs.confusion_matrix(gt, seg_real[i])
        count += a.shape[0]
    keys = ["photo2label"] + (["label2photo", "label2photo_real"] if seg is not None else [])
    return [{"dataset": "cityscapes", "direction": k, "n_images": count, **cs.segmentation_scores(conf[k])}
            for k in keys]


def load_segmenter(path: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    """The FCN-score segmenter: a checkpoint of the ``segmentation`` mode (e.g. ``segnet2d``)."""
    model, sx, _, ck = load_generator(path, map_location="cpu")
    if getattr(model, "num_classes", None) != cs.NUM_CLASSES:
        raise ValueError(
            f"{path}: model {ck['model']['name']!r} does not output {cs.NUM_CLASSES} Cityscapes class logits; "
            "train one with configs/2d/segnet_cityscapes.yaml"
        )
    model = model.to(device)

    class _Seg(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(sx.normalise(x, channel_axis=1))

    return _Seg()


def evaluate2d(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    csv: str | os.PathLike,
    dataset: str | None = None,
    fcn: str | os.PathLike | None = None,
    split: str = "val",
    size: int | None = None,
    batch_size: int = 4,
    device: str = "auto",
    limit: int | None = None,
    per_image_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate ``checkpoint`` on ``data/split`` and write the summary CSV. Returns the summary table."""
    dev = resolve_device(device)
    tr = Translator(checkpoint, dev)
    dataset = dataset or infer_dataset(tr.ck, data)
    if dataset not in DIRECTIONS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DIRECTIONS)}")
    if fcn is not None and dataset != "cityscapes":
        raise ValueError(f"--fcn is for Cityscapes label->photo; dataset is {dataset!r}")
    loader = _loader(data, split, _image_size(tr.ck, dataset, size), dataset, batch_size, limit)
    if dataset == "maps":
        rows, table = evaluate_maps(tr, loader, dev, progress)
        if per_image_csv is not None:
            with atomic_path(per_image_csv) as tmp:
                table.to_csv(tmp, index=False)
    else:
        seg = load_segmenter(fcn, dev).eval() if fcn is not None else None
        rows = evaluate_cityscapes(tr, loader, dev, seg, progress)
    summary = pd.DataFrame(rows)
    with atomic_path(csv) as tmp:
        summary.to_csv(tmp, index=False)
    return summary
