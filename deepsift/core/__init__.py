"""The bottom layer: errors, the record and image contract, checkpoint I/O, configs,
distributed helpers, runtime (devices, autocast), downloads, progress bars, and the
re-encoding and test-time perturbations applied to images as they are loaded.

Imports nothing from ``datasets``, ``detectors`` or the rest of ``deepsift``.
"""
