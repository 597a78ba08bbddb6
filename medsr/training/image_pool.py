"""The image pool of CycleGAN (Shrivastava et al.): discriminators see a history of fakes.

With probability 1/2 a generated sample is swapped for one from the pool of the last
``size`` samples, which damps oscillation in unpaired GAN training. The pool owns its random
generator and exposes its whole state (contents included) so a resumed run continues exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ImagePool:
    """A buffer of up to ``size`` past generated samples.

    Args:
        size: pool capacity; 0 disables the pool (``query`` returns its input).
        seed: seed of the pool's own random generator.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.rng = np.random.default_rng(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch (B, C, ...) mixing ``images`` (detached) with pooled ones."""
        if self.size == 0:
            return images.detach()
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() > 0.5:
                i = int(self.rng.integers(0, self.size))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Contents and generator state as plain containers and CPU tensors (weights_only-safe)."""
        state = self.rng.bit_generator.state
        return {
            "size": self.size,
            "images": [t.cpu() for t in self.images],
            "rng": {"bit_generator": state["bit_generator"], "state": {k: int(v) for k, v in state["state"].items()},
                    "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])},
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        self.images = [t.to(device) for t in state["images"]]
        self.rng.bit_generator.state = state["rng"]
