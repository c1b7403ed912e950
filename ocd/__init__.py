"""OCD: learning to overfit with conditional diffusion models.

The library behind the pipeline's stages, one module per concept:

- ``ocd.params``  params.yaml, parsed and validated into typed sections
- ``ocd.device``  where tensors live (CUDA when present, else CPU) and threads
- ``ocd.data``    dataset registry (``mnist5k``, ``mnist_idx``, ``digits``)
- ``ocd.tasks``   loss and metrics per task type (classification)
- ``ocd.models``  model registry and the per-sample-weight primitive
- ``ocd.base``    training, evaluating, saving and loading the base model
"""

__version__ = "0.1.0"
