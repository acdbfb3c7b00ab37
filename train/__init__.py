"""Training the two adapters of the published model from annotated face data.

* :mod:`train.annotate` turns a folder of images and videos into samples (ArcFace embedding, SMIRK expression,
  aligned crop; clip id and time for video frames) described by a manifest (:mod:`train.manifest`).
* :mod:`train.expression_adapter` is stage 1 (expression MLP + decoupled cross-attention key/value projections).
* :mod:`train.reference_adapter` is stage 2 (LoRA on the self-attention of the denoising UNet, reference pairs).

Both stages share one training loop (:mod:`train.loop`) built on ``accelerate``.
"""
