"""Shared test set-up: deterministic, small, CPU only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


def oblique_affine(voxel=(1.5, 1.25, 2.0), angles=(0.3, -0.2, 0.5), origin=(-90.0, 12.5, -40.0)) -> np.ndarray:
    """A non-identity, oblique voxel-to-world affine (rotation x anisotropic scale + shift)."""
    from scipy.spatial.transform import Rotation

    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles).as_matrix() @ np.diag(voxel)
    a[:3, 3] = origin
    return a


@pytest.fixture
def one_thread():
    """One torch thread for tiny tensors: on the shared 2-core machine OpenMP synchronisation between
    two threads costs more than it saves (measured 4x slower steps under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def oblique() -> np.ndarray:
    return oblique_affine()
