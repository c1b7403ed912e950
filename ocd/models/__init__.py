"""The base models: the families (sequential.py: lenet5 and mlp; nerf.py:
TinyNeRF; sentence.py: SetFit; the speech separators mulcat.py and convtasnet.py,
what they share in separator.py), the layer
contract every family is cut by (cut.py), the minibatch loop they train with
(fit.py), their registry keyed by ``model.name`` (registry.py), and
training, saving and loading the base model and the deep ensemble (base.py).

Nothing is imported here: a family imports cut.py and fit.py, the registry
imports the families, and nothing below the registry imports it.
"""
