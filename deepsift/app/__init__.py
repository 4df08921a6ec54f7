"""The composition layer: turns configs into data sources, detectors and loggers and hands
them to the engine (``train.py``, ``evaluate.py`` and ``score.py`` are thin wrappers).
"""
