"""Dataset sources for deepsift.

A *data source* (one per benchmark, configured in ``configs/data``) knows where a
benchmark's files are and returns, for each split, a list of :class:`Record`.
The detector's own preprocessing turns records into tensors
(:class:`RecordDataset`), so every detector sees every benchmark the same way.

This package is imported from the repository root and never installed: a
top-level ``datasets`` in site-packages would shadow Hugging Face's.
"""

from deepsift.core.records import Record, RecordDataset, collate_samples

__all__ = ["Record", "RecordDataset", "collate_samples"]
