"""A portable copy of a checkpoint's generator: a ``torch.export`` program that plain PyTorch runs without medsr.

The program is F with the checkpoint's normalisation around it, exported under ``torch.no_grad`` (where
the reversible core runs its plain forward, not its custom autograd Function, so the graph holds only
standard ATen operators)::

    y = F((x - mean_x) / std_x) * std_y + mean_y        x, y: (B, C, X, Y, Z) float32, original units

``x`` is what ``medsr infer`` feeds the network: the LR volume NN-upsampled onto the HR grid (prep's
``lr_up``; ``X, Y, Z`` multiples of the factor for an LR-grid model), and ``y`` lies on that HR grid.
One pass over the whole volume equals ``medsr infer --tta none`` (whose windows blend to the same
values; ``tests/test_export.py`` holds it to 1e-5 of the output's range in a process that never
imports medsr). Batch and spatial sizes are symbolic, so any volume size runs (multiples of the factor).
Load it with ``torch.export.load(path).module()``; the model card travels inside the file as
``medsr.json`` (``torch.export.load(path, extra_files={"medsr.json": ""})``). ``torch.export`` rather than
TorchScript: PyTorch 2.13 deprecates ``torch.jit.trace``, ``save`` and ``load``.

A model with instance norm (``configs/table3``) normalises each window by its own statistics; its
program must be run on windows of the training patch size, as ``medsr infer`` does.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from medsr.checkpoint import load_generator
from medsr.inference import lr_grid_factor, model_norm
from medsr.model_card import model_card
from medsr.networks.interpolate import block_mean
from medsr.utils.atomic import atomic_path
from medsr.utils.paths import check_not_input


class NormalisedGenerator(torch.nn.Module):
    """F between normalisation and de-normalisation: (B, C, X, Y, Z) lr_up -> (B, C, X, Y, Z), original units."""

    def __init__(self, model: torch.nn.Module, x_mean, x_std, y_mean, y_std) -> None:
        super().__init__()
        self.model = model
        self.lr_factor = lr_grid_factor(model)
        shape = (1, -1, 1, 1, 1)
        for name, v in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean), ("y_std", y_std)):
            self.register_buffer(name, torch.as_tensor(v, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.x_mean) / self.x_std
        if self.lr_factor != (1, 1, 1):  # as inference: the LR-grid model reads the LR volume (block means of lr_up)
            y = self.model.forward_lr(block_mean(x, self.lr_factor))
        else:
            y = self.model(x)
        return y * self.y_std + self.y_mean


def export_generator(checkpoint: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False
                     ) -> dict[str, Any]:
    """Write the ``torch.export`` program of ``checkpoint`` to ``output``; returns the metadata stored with it.

    Batch and spatial sizes are dynamic (spatial sizes multiples of the factor, at least 2 LR voxels).

    Raises:
        FileExistsError: ``output`` exists and not ``overwrite``.
    """
    output = Path(output)
    check_not_input([output], {"the checkpoint": checkpoint})
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists (pass --overwrite to replace it)")
    model, sx, sy, ck = load_generator(checkpoint)
    card = model_card(ck)
    wrapped = NormalisedGenerator(model.eval(), sx.mean, sx.std, sy.mean, sy.std).eval()
    f = wrapped.lr_factor  # per axis; (1, 1, 1) for a model on the HR grid
    # An example of batch 2 and unequal sizes: sizes of 1 (or equal sizes) would be specialised as constants.
    x = torch.randn(2, int(card["channels"] or len(sx.mean)), *(fi * n for fi, n in zip(f, (6, 7, 8))))
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    for axis, (fi, name) in enumerate(zip(f, "xyz"), start=2):
        d = torch.export.Dim(name, min=2, max=4096)
        dims[axis] = fi * d if fi > 1 else d
    with torch.no_grad():
        program = torch.export.export(wrapped, (x,), dynamic_shapes={"x": dims})
        if not torch.allclose(program.module()(x), wrapped(x), atol=1e-5):
            raise RuntimeError(f"{checkpoint}: the exported program differs from the model")
    meta = {"format": "medsr-torch.export-1", "input": "lr_up: (B, C, X, Y, Z) float32 on the HR grid, original units",
            "output": "(B, C, X, Y, Z) float32, original units", "norm": model_norm(ck), "card": card}
    # Serialised in memory, then written by Python, so a full disk is an OSError naming the file (torch's
    # own zip writer reports it as a RuntimeError without the cause); see medsr.checkpoint.save_checkpoint.
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"medsr.json": json.dumps(meta)})
    with atomic_path(output, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
    return meta
