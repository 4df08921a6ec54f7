"""deepsift's own layers, each importing only those below it (a test enforces it):

* :mod:`deepsift.core`: errors, the record and image contract, checkpoint I/O, configs,
  devices, distributed helpers, downloads, progress bars;
* ``datasets`` and ``detectors`` (top-level packages, neither imports the other);
* :mod:`deepsift.engine` (training and evaluation loops, metrics, reports, plots) and
  :mod:`deepsift.scoring` (batch scoring: inputs, decoding, faces, pools, records);
* :mod:`deepsift.app`: the composition layer behind ``train.py``, ``evaluate.py`` and
  ``score.py``, the only place besides the detector factory that builds objects from configs.

Imported from the repository root, like ``detectors`` and ``datasets``.
"""

__version__ = "0.1.0"
