"""Acquisition geometry: the gradient scheme, the oblique voxel grid and the head's pose in it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from data_prep.phantom.config import PhantomConfig


def gradient_scheme(n_b0: int, n_dirs: int, bval: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HCP-like b-values and b-vectors: b0s interleaved among dispersed shell directions.

    Returns:
        (bvals (N,), bvecs (N, 3)) with N = n_b0 + n_dirs; b0 rows have b = 5 and a zero vector.
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    xyz = rng.normal(size=(n_dirs, 3))
    hemi, _ = disperse_charges(HemiSphere(xyz=xyz / np.linalg.norm(xyz, axis=1, keepdims=True)), 500)
    dirs = hemi.vertices
    n = n_b0 + n_dirs
    is_b0 = np.zeros(n, bool)
    is_b0[np.linspace(0, n - 1, n_b0).round().astype(int) if n_b0 > 1 else [0] * n_b0] = True
    bvals = np.full(n, 5.0)
    bvals[~is_b0] = bval + rng.choice([-10.0, -5.0, 0.0, 5.0, 10.0], size=n_dirs)
    bvecs = np.zeros((n, 3))
    bvecs[~is_b0] = dirs
    return bvals, bvecs


def oblique_affine(shape: Sequence[int], voxel_size: float, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """An HCP-like LAS voxel grid (x flipped, det < 0) rotated by up to ``max_deg`` per axis.

    The grid centre lands near the world origin (with a random offset of a few mm).
    """
    rot = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-voxel_size, voxel_size, voxel_size])
    centre_vox = (np.asarray(shape, float) - 1) / 2
    a[:3, 3] = np.array([0.0, -18.0, 10.0]) + rng.uniform(-5, 5, 3) - a[:3, :3] @ centre_vox
    return a

@dataclass
class _Frame:
    """Where the head sits: anatomical coordinates (mm; x left->right, y posterior->anterior,
    z inferior->superior) of every voxel, the brain hull's semi-axes, and the frame rotations."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    pose: np.ndarray      # anat -> world rotation
    to_vox: np.ndarray    # anat -> voxel-frame rotation (tensor and bvec frame)
    centre: np.ndarray    # world position of the anatomical origin
    semi: np.ndarray      # brain hull semi-axes (mm)

    def anat(self, ss: int = 1) -> np.ndarray:
        """(ss*X, ss*Y, ss*Z, 3) float32 anatomical coordinates of sub-voxel centres."""
        axes = [((np.arange(n * ss, dtype=np.float32) + 0.5) / ss - 0.5) for n in self.shape]
        ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        world = ijk @ self.affine[:3, :3].T.astype(np.float32) + (self.affine[:3, 3] - self.centre).astype(np.float32)
        return world @ self.pose.astype(np.float32)


def _head_frame(cfg: PhantomConfig, rng: np.random.Generator) -> _Frame:
    shape = tuple(int(s) for s in cfg.shape)
    affine = oblique_affine(shape, cfg.voxel_size, cfg.max_oblique_deg, rng)
    pose = Rotation.from_euler("xyz", rng.uniform(-cfg.max_pose_deg, cfg.max_pose_deg, 3), degrees=True).as_matrix()
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    vox_frame = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # voxel axes in world
    half_fov = np.asarray(shape, np.float32) * cfg.voxel_size / 2
    semi = (cfg.brain_fraction * half_fov * rng.uniform(0.93, 1.04, 3)).astype(np.float32)
    return _Frame(shape, affine, pose, (vox_frame.T @ pose).astype(np.float32), centre, semi)
