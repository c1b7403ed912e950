"""The pipeline's stages: thin Typer commands over the ``ocd`` library.

Each module holds one stage (one DVC stage in dvc.yaml): it parses params,
calls the library and writes the stage's outputs. ``ocd --help`` lists them.
"""
