"""OCD: learning to overfit with conditional diffusion models.

The library behind the pipeline's stages, by role: ``ocd.data`` (the
datasets), ``ocd.models`` (the base models and their layer contract),
``ocd.hypernet`` (the denoiser, scale model and regressor that predict a
weight delta, and their one training loop), and at the top what the stages
share (params, the store, layer selection, overfitting, evaluation). README's
"Layout" section lists every module; a test keeps it true.
"""

__version__ = "0.1.0"
