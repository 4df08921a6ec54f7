"""deepsift's engine: metrics, training and evaluation loops, checkpoints, plots.

Imported from the repository root, like ``detectors`` and ``datasets``.
"""

__version__ = "0.1.0"
