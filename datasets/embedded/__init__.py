"""The embedded benchmark: deepsift's default, offline, real-vs-synthetic dataset.

Two versions, selected by ``data.version``: 2 (the default, :mod:`datasets.embedded.v2`:
six generator families with matched spectra, one file format for all) and 1, described
below and kept so that results on it stay reproducible.

Real 64-pixel crops of colour photographs shipped inside scikit-image,
scikit-learn and matplotlib, paired with their re-synthesis by four small
generator-style autoencoders that differ only in their up-sampling layer
(``tconv``, ``nearest``, ``bilinear``, ``pixelshuffle``), after AutoGAN (Zhang,
Karaman and Chang, WIFS 2019) and Odena et al., "Deconvolution and Checkerboard
Artifacts" (Distill 2016). Built on first use with no network access, cached per
settings, split by source photograph. A sanity-check benchmark, not a
replacement for FaceForensics++ or GenImage: see :class:`EmbeddedBenchmark`.

``python -m datasets.embedded`` builds it and prints the counts. Importing this
package does nothing but define names.
"""

from datasets.embedded.build import BuildSettings, benchmark_dir, build_embedded_benchmark
from datasets.embedded.generators import FAMILIES, FAMILIES_V2
from datasets.embedded.source import EmbeddedBenchmark, families

__all__ = [
    "FAMILIES",
    "FAMILIES_V2",
    "BuildSettings",
    "EmbeddedBenchmark",
    "benchmark_dir",
    "build_embedded_benchmark",
    "families",
]
