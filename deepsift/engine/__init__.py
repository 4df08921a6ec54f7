"""The loops: inference and training epochs over records, metrics, reports and plots.

Handed a detector and records; builds neither (that is :mod:`deepsift.app`).
"""
