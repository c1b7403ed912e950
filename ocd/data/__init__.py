"""The datasets: the split :class:`~ocd.data.core.Dataset` every loader returns
and its shared steps (core.py), the loaders by kind (images.py, tabular.py,
scenes.py: rendered 3-D scenes, texts.py: few-shot text, speech.py: speech
mixtures spoken by espeak.py), and the registry keyed by ``data.name``
(registry.py).

Nothing is imported here: a loader imports core.py, the registry imports the
loaders, and no loader imports the registry.
"""
