"""Batch scoring for moderators: the engine behind ``score.py``.

Modules, from input to output:

* :mod:`.inputs` enumerates files, folders, glob patterns, list files and zip/tar
  archives (read as streams, never extracted) into work items, lazily;
* :mod:`.decode` turns bytes into an 8-bit RGB image, with every hard case
  (lying extensions, CMYK, 16-bit, palette, alpha, EXIF rotation, animation,
  truncation, decompression bombs) handled or refused with a short reason;
* :mod:`.video` samples frames evenly from video files;
* :mod:`.faces` crops faces for detectors that expect face crops;
* :mod:`.stability` re-scores light launderings (JPEG 90, 0.75x resize);
* :mod:`.extras` reads provenance signals (:mod:`.provenance`) and the PDQ hash
  (:mod:`.pdq`) when available;
* :mod:`.prepare` runs all of that for one item (in worker processes);
* :mod:`.pool` runs worker processes with bounded queues and crash isolation;
* :mod:`.models` loads a detector, a checkpoint or an ensemble;
* :mod:`.assemble` turns the model's probabilities into records (faces, frames, bands);
* :mod:`.calibration` maps scores to bands and fits band thresholds;
* :mod:`.output` writes JSONL/CSV records and reads them back for ``--resume``;
* :mod:`.runner` streams everything together with bounded memory;
* :mod:`deepsift.app.score_cli` is the command line of ``score.py`` (the composition
  layer, above this package).

Nothing heavy is imported at package import.
"""
