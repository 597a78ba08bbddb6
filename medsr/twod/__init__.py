"""The paper's 2D experiments (Cityscapes, Maps): aligned-image datasets and their metrics.

Models (``resnet2d``, ``rev_resnet2d``, ``segnet2d``, ``patchgan2d``) live in the shared model
registry and training runs through the shared Trainer; this package holds only what is 2D-specific:

* :mod:`medsr.twod.aligned` - the pix2pix A|B aligned format: reading, listing and tensor conversion;
* :mod:`medsr.twod.datasets` - the ``aligned2d`` dataset builder and :class:`~medsr.twod.datasets.AlignedItems`,
  the one dataset training reads (paired, unpaired and segmentation items);
* :mod:`medsr.twod.segmentation` - the ``segmentation`` training mode (the FCN-score segmenter);
* :mod:`medsr.twod.cityscapes` - label colours, colour -> train id, confusion-matrix scores;
* :mod:`medsr.twod.metrics` - MAE, PSNR, SSIM on 0-255;
* :mod:`medsr.twod.synthetic` - small synthetic Maps / Cityscapes folders for tests and demos.
"""
from __future__ import annotations
