"""Training data: dataset builders (by ``data.type``), the 3D brain-patch dataset, samplers, augmentation."""
from __future__ import annotations

from medsr.data.registry import TrainData, build_dataset, list_datasets, register_dataset

__all__ = ["TrainData", "build_dataset", "list_datasets", "register_dataset"]
