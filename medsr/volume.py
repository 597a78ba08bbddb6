"""The volume type: a channel-first float32 array that carries its world geometry.

Every step from loader to writer passes a :class:`Volume`, so the affine can never be
dropped on the way (the failure mode of PIL-only pipelines).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """A 3D image with C channels and its voxel-to-world (RAS+, mm) affine.

    Attributes:
        data: float32 array of shape (C, X, Y, Z). Scalar images have C = 1; DTI has C = 6
            in FSL ``dtifit --save_tensor`` order (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz).
        affine: 4x4 float64 matrix mapping voxel indices (i, j, k, 1) to RAS+ world mm.
        name: where the volume came from (a path or subject id), used in error messages.
        meta: free-form extras (e.g. ``{"kind": "dti"}``).
    """

    data: np.ndarray
    affine: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim == 3:  # a scalar volume: give it its channel axis
            self.data = self.data[None]
        if self.data.ndim != 4:
            raise ValueError(f"{self.name or 'volume'}: expected (C, X, Y, Z) data, got shape {self.data.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"{self.name or 'volume'}: affine must be 4x4, got {self.affine.shape}")

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm (column norms of the affine's 3x3 block)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel coordinates (..., 3) to world mm (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def with_data(self, data: np.ndarray, *, name: str | None = None) -> "Volume":
        """A new volume on the same grid (same affine) holding ``data`` (C, X, Y, Z)."""
        if tuple(np.shape(data)[-3:]) != self.spatial_shape:
            raise ValueError(
                f"{self.name}: new data has spatial shape {np.shape(data)[-3:]}, grid is {self.spatial_shape}"
            )
        return Volume(data, self.affine.copy(), name=self.name if name is None else name, meta=dict(self.meta))

    def same_space(self, other: "Volume", *, atol: float = 1e-4) -> bool:
        """True when both volumes share spatial shape and affine (within ``atol`` mm)."""
        return self.spatial_shape == other.spatial_shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def check_same_space(self, other: "Volume", *, atol: float = 1e-4) -> None:
        """Raise a ValueError naming both volumes if their grids differ."""
        if self.spatial_shape != other.spatial_shape:
            raise ValueError(f"{other.name}: shape {other.spatial_shape} differs from {self.name} {self.spatial_shape}")
        if not np.allclose(self.affine, other.affine, atol=atol):
            raise ValueError(f"{other.name}: affine differs from {self.name}'s")
