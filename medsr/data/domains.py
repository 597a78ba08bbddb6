"""Unpaired training on disjoint domains: X patches (``lr_up``) from some subjects, Y patches (``hr``) from others.

The paper's unpaired setting draws X and Y patches independently but from the same training subjects, so
every subject's HR volume is also a Y sample of its own LR volume. A study that is truly unpaired has LR
scans of some people and HR scans of others; ``data.domains: disjoint`` trains that way on prepared pairs:
the training subjects are dealt in turn to X and Y (manifest order: the 1st, 3rd, ... to X; the 2nd,
4th, ... to Y), X subjects give only their ``lr_up`` and Y subjects only their ``hr``, and the
normalisation statistics come from what each domain gives (Y's HR; X's ``lr_up`` when ``separate``).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch

from medsr.data.sampler import Item

T = TypeVar("T")


def split_domains(subjects: Sequence[T], domains: str, mode: str) -> tuple[list[T], list[T]]:
    """(X subjects, Y subjects): both all of ``subjects`` when ``shared``; dealt in turn when ``disjoint``.

    Raises:
        ValueError: ``disjoint`` outside ``train.mode: unpaired``, or with fewer than two subjects.
    """
    if domains == "shared":
        return list(subjects), list(subjects)
    if mode != "unpaired":
        raise ValueError(f"config key 'data.domains': disjoint domains need train.mode unpaired, not {mode!r} "
                         "(the other modes train on pairs)")
    if len(subjects) < 2:
        raise ValueError(f"config key 'data.domains': disjoint domains need at least 2 training subjects, got "
                         f"{len(subjects)}")
    return list(subjects[0::2]), list(subjects[1::2])


class DomainPairs(torch.utils.data.Dataset):
    """Unpaired items over two patch datasets: X from ``x``'s subjects, Y from ``y``'s.

    Items come from an :class:`medsr.data.sampler.EpochBatchSampler` with ``n_items_y = len(y)``:
    ``(ix, iy, seed_x, seed_y)`` names X item ``ix`` of ``x`` and Y item ``iy`` of ``y``.

    Args:
        x: a :class:`medsr.data.patch_dataset.PatchDataset` over the X subjects (its ``lr_up`` is read).
        y: one over the Y subjects (its ``hr`` is read).

    ``dataset[item]`` returns ``{"x", "y"}`` (C, s, s, s) and, when the datasets carry masks,
    ``"mask_x"`` and ``"mask_y"`` (1, s, s, s).
    """

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_grid(self) -> int:
        return self.x.n_grid

    def __getitem__(self, item: Item | int) -> dict[str, torch.Tensor]:
        if isinstance(item, int):  # a plain index (a sample to check shapes with): X item i, a Y item beside it
            item = (item, item % len(self.y), 0, 1)
        ix, iy, sx, sy = item
        return {**self.x.side("x", ix, sx), **self.y.side("y", iy, sy)}
