"""Training: one Trainer, modes registered by name, network builder, schedules, image pool, DDP helpers."""
from __future__ import annotations

from medsr.training.base import TrainMode, create_mode, list_modes, register_mode
from medsr.training.trainer import Trainer, TrainingDiverged

__all__ = ["TrainMode", "Trainer", "TrainingDiverged", "create_mode", "list_modes", "register_mode"]
