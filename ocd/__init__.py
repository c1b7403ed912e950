"""OCD: learning to overfit with conditional diffusion models.

The library behind the pipeline's stages, one module per concept; README's
"Layout" section maps them.
"""

__version__ = "0.1.0"
