"""sbir: reproducible zero-shot sketch-based image retrieval.

The library (this package) knows nothing of DVC or ``params.yaml``: the stages in ``pipeline/`` and the
commands in ``sbir.cli`` pass it plain arguments.
"""

__version__ = "0.1.0"
