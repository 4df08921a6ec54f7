"""deepsift detectors: one model per module, one config per model in configs/detector.

>>> from detectors import load_detector
>>> det = load_detector("durall")            # configured, untrained
>>> det = load_detector("runs/x/best.pt")    # a trained checkpoint
>>> probs = det.predict(["a.jpg", "b.png"])  # probability of synthetic, per image

Nothing is built or loaded at import.
"""

from detectors.base import Detector
from detectors.factory import build_detector, detector_config, list_detectors, load_detector

__all__ = ["Detector", "build_detector", "detector_config", "list_detectors", "load_detector"]
