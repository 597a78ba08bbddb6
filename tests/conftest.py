"""Shared test set-up: deterministic, small, CPU only."""
from __future__ import annotations

import numpy as np
import pytest

from medsr.utils.threads import passive_wait_policy

passive_wait_policy()  # before torch loads, as `medsr` does: waiting OpenMP threads sleep on a shared machine
import torch  # noqa: E402

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


def train_config(manifest, out, mode: str = "paired_l1", *, data: dict | None = None, model: dict | None = None,
                 discriminator: dict | None = None, **train) -> dict:
    """A tiny 3D training config as a dict: 8^3 patches of ``manifest`` into run folder ``out``.

    Defaults: ``rev_srcnn3d`` width 4, depth 2, no norm, no residual; ``patchgan3d`` width 4 with the
    patches' depth; one epoch, a log row every step, one thread, no PNGs. ``data``, ``model`` and
    ``discriminator`` update the data section and the two networks' kwargs; keywords update ``train``.
    """
    return {
        "output_dir": str(out),
        "data": {"manifest": str(manifest), "patch_size": 8, **(data or {})},
        "model": {"name": "rev_srcnn3d",
                  "kwargs": {"width": 4, "depth": 2, "norm": "none", "residual": False, **(model or {})}},
        "discriminator": {"name": "patchgan3d", "kwargs": {"width": 4, "patch_size": "auto", **(discriminator or {})}},
        "train": {"mode": mode, "n_epochs": 1, "log_every": 1, "threads": 1, "samples": False, **train},
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomise(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random normal weights everywhere (the zero-initialised convs too), so no block starts as the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def random_twins(name: str, *, std: float = 0.1, part: str | None = None, dtype: torch.dtype = torch.float64,
                 **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Model ``name`` twice with the same random weights: memory-saving (``memory_efficient=True``) and plain.

    Args:
        name: a registered model with a ``memory_efficient`` switch.
        std: SD of the random weights.
        part: randomise only this submodule (e.g. ``"core"``), leaving the rest as built.
        dtype: the twins' dtype (float64: only the maths can differ between them).
        kwargs: the constructor's other arguments.
    """
    from medsr.networks import create_model

    saving = create_model(name, memory_efficient=True, **kwargs).to(dtype)
    plain = create_model(name, memory_efficient=False, **kwargs).to(dtype)
    randomise(getattr(saving, part) if part else saving, std)
    plain.load_state_dict(saving.state_dict())
    return saving, plain
