"""OCD: learning to overfit with conditional diffusion models.

The library behind the pipeline's stages, one module per concept:

- ``ocd.params``  params.yaml, parsed and validated into typed sections
- ``ocd.device``  where tensors live (CUDA when present, else CPU), threads, the runtime record
- ``ocd.artifacts`` atomic writes and checkpoints that load without unpickling code
- ``ocd.data``    dataset registry (``mnist5k``, ``mnist_idx``, ``digits``, ``california``, ``diabetes``)
- ``ocd.tasks``   loss, metrics and ensembling per task type (classification, regression)
- ``ocd.models``  model registry and the per-sample-weight primitive
- ``ocd.base``    training, evaluating, saving and loading the base model
- ``ocd.layers``  layer scores (entropy of the loss under weight noise) and selection
- ``ocd.overfit`` vectorised per-sample overfitting of one layer
- ``ocd.store``   the Zarr weight-delta store: writing, resuming, reading, summaries
- ``ocd.schedule``, ``ocd.unet``, ``ocd.diffusion``  noise schedule, denoiser, conditioning, training
- ``ocd.scale``   the scale model rho(I(x))
- ``ocd.evaluation``, ``ocd.pipeline``  the results table; the trained pipeline for new inputs
"""

__version__ = "0.1.0"
