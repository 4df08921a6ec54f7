"""The loops: inference and training epochs over records, metrics, reports, plots and
robustness sweeps.

Handed a detector and records; builds neither (that is :mod:`deepsift.app`).
"""
