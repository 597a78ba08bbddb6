"""``medsr export``: a checkpoint's generator as a ``torch.export`` program that plain PyTorch runs without medsr."""
from __future__ import annotations

import argparse

EPILOG = """\
The program is the generator F with the checkpoint's normalisation inside:
y = F((x - mean_x) / std_x) * std_y + mean_y, where x is the LR volume NN-upsampled onto the HR grid
(prep's lr_up; (B, C, X, Y, Z) float32, sizes multiples of the factor) and y the super-resolved
volume on that grid, both in the data's original units; batch and sizes are free (multiples of the
factor). One pass over a whole volume reproduces 'medsr infer --tta none'. The model card is stored
in the file as medsr.json. Written with torch.export (TorchScript is deprecated in PyTorch 2.13).

Use it without medsr (PyTorch and numpy only):
  import torch
  model = torch.export.load("model.pt").module()
  x = torch.from_numpy(lr_up).float()[None]          # lr_up: (C, X, Y, Z)
  # from an LR volume: x = lr[None].repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
  with torch.no_grad():
      y = model(x)[0].numpy()                       # (C, X, Y, Z); write it with the input's HR affine
  extra = {"medsr.json": ""}; torch.export.load("model.pt", extra_files=extra)  # the card, as JSON

A model with instance norm (configs/table3) normalises each window by itself: run it on windows of
its training patch size (medsr info shows it), as 'medsr infer' does.

Example:
  medsr export run/last.pt --output model.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a medsr checkpoint (.pt)")
    parser.add_argument("--output", required=True, help="the torch.export program file to write (e.g. model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from medsr.export import export_generator

    meta = export_generator(args.checkpoint, args.output, overwrite=args.overwrite)
    card = meta["card"]
    print(f"wrote {args.output}: {card['model']}, {card['channels']} channel(s), factor "
          f"{'x'.join(str(f) for f in card['factor'] or ['?'])}; input lr_up (B, C, X, Y, Z) in original units")
    return 0
