"""Cityscapes label colours, colour -> train-id mapping and segmentation scores.

The pix2pix Cityscapes archive stores labels as *colour* images (B side of each aligned image),
JPEG-compressed, so colours are only approximately the palette ones. Two mappings are used:

* ground truth (:func:`colours_to_train_ids`): each pixel takes the train id of the nearest colour
  of the full Cityscapes palette (all 34 labels). Labels that are not among the 19 evaluation
  classes (parking, ground, caravan, ...) become :data:`IGNORE`, so they are not scored;
* predictions (:func:`prediction_to_train_ids`): as the paper and the issue ask, each generated
  colour takes the nearest of the 19 train-id colours or black ("unlabeled", predicted as ignore,
  which counts as a miss for the true class).

Scores follow the pix2pix / CycleGAN evaluation: one confusion matrix over the whole test set,
then per-pixel accuracy, mean per-class accuracy and mean class IoU (classes absent from both the
ground truth and the predictions are left out of the means).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "CLASS_NAMES",
    "IGNORE",
    "NUM_CLASSES",
    "TRAIN_COLOURS",
    "colours_to_train_ids",
    "confusion_matrix",
    "prediction_to_train_ids",
    "segmentation_scores",
    "train_ids_to_colours",
]

IGNORE = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# RGB colour of train ids 0..18 (cityscapesScripts labels.py).
TRAIN_COLOURS = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.float64,
)

# The colours of the labels that are *not* evaluated (train id 255). Duplicates of evaluated
# colours (polegroup = pole, license plate = car) are left out: the colour cannot tell them apart.
_IGNORED_COLOURS = np.array(
    [
        (0, 0, 0),  # unlabeled, ego vehicle, rectification border, out of roi, static
        (111, 74, 0),  # dynamic
        (81, 0, 81),  # ground
        (250, 170, 160),  # parking
        (230, 150, 140),  # rail track
        (180, 165, 180),  # guard rail
        (150, 100, 100),  # bridge
        (150, 120, 90),  # tunnel
        (0, 0, 90),  # caravan
        (0, 0, 110),  # trailer
    ],
    dtype=np.float64,
)

_GT_PALETTE = np.concatenate([TRAIN_COLOURS, _IGNORED_COLOURS])
_GT_IDS = np.concatenate([np.arange(NUM_CLASSES), np.full(len(_IGNORED_COLOURS), IGNORE)])
_PRED_PALETTE = np.concatenate([TRAIN_COLOURS, np.zeros((1, 3))])
_PRED_IDS = np.concatenate([np.arange(NUM_CLASSES), [IGNORE]])


def _nearest(rgb: np.ndarray, palette: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) colour image, got shape {rgb.shape}")
    # (H*W, P) squared distances; a 256x256 image against 29 colours is ~2M floats, fine.
    flat = rgb.reshape(-1, 3)
    d = ((flat[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    return ids[np.argmin(d, axis=1)].reshape(rgb.shape[:2]).astype(np.int64)


def colours_to_train_ids(rgb: np.ndarray) -> np.ndarray:
    """Ground-truth label colours ``(H, W, 3)`` on 0-255 -> train ids ``(H, W)`` int64 (255 = ignore)."""
    return _nearest(rgb, _GT_PALETTE, _GT_IDS)


def prediction_to_train_ids(rgb: np.ndarray) -> np.ndarray:
    """Generated label colours ``(H, W, 3)`` on 0-255 -> nearest of the 19 colours or black (255)."""
    return _nearest(rgb, _PRED_PALETTE, _PRED_IDS)


def train_ids_to_colours(ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Train ids ``(H, W)`` -> colours ``(H, W, 3)`` uint8 (ignore is black); for pictures."""
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    valid = (ids >= 0) & (ids < NUM_CLASSES)
    out[valid] = TRAIN_COLOURS[ids[valid]].astype(np.uint8)
    return out


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion counts of one image, ``(num_classes, num_classes + 1)`` int64.

    Rows are true classes; columns are predicted classes plus a last column for pixels predicted
    as ignore (or any id outside ``0..num_classes-1``). Ground-truth ignore pixels are not counted.
    Matrices of several images add up.
    """
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"label maps differ in size: {gt.size} vs {pred.size} pixels")
    keep = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], pred[keep]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def segmentation_scores(conf: np.ndarray) -> dict[str, float]:
    """Per-pixel accuracy, mean per-class accuracy and mean class IoU of a confusion matrix.

    Args:
        conf: ``(N, N)`` or ``(N, N + 1)`` counts from :func:`confusion_matrix` (rows = truth).

    Returns:
        ``{"pixel_acc", "class_acc", "class_iou"}``; NaN when no labelled pixel was seen.
    """
    conf = np.asarray(conf, dtype=np.float64)
    n = conf.shape[0]
    tp = np.diag(conf[:, :n])
    gt_count = conf.sum(1)
    pred_count = conf[:, :n].sum(0)
    total = conf.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        pixel_acc = tp.sum() / total if total else np.nan
        # Classes with no true pixel have no accuracy; nanmean skips them like the pix2pix script.
        per_class = np.where(gt_count > 0, tp / gt_count, np.nan)
        union = gt_count + pred_count - tp
        iou = np.where(union > 0, tp / union, np.nan)
    if np.all(np.isnan(per_class)):
        return {"pixel_acc": float(pixel_acc), "class_acc": float("nan"), "class_iou": float("nan")}
    return {
        "pixel_acc": float(pixel_acc),
        "class_acc": float(np.nanmean(per_class)),
        "class_iou": float(np.nanmean(iou)),
    }
