"""The bottom layer: errors, the record and image contract, checkpoint I/O, configs,
distributed helpers, runtime (devices, autocast), downloads and progress bars.

Imports nothing from ``datasets``, ``detectors`` or the rest of ``deepsift``.
"""
