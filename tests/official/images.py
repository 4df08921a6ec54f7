"""The pictures every official-parity reference was computed on, made from a seed.

Integer arithmetic and NumPy's ``PCG64`` stream only, so the scratch scripts that run
the authors' code and the tests here get the same pixels on any machine: two video
frames (640 x 480), face crops of 208, 256 and 342 px (the sizes a face detector
hands over, none of them a network's native size), and a 299 px one.
"""

from __future__ import annotations

import numpy as np

#: (width, height) of the reference pictures, in order
SIZES: tuple[tuple[int, int], ...] = (
    (640, 480),
    (480, 640),
    (208, 208),
    (256, 256),
    (342, 342),
    (299, 299),
)


def reference_image(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB picture: smooth colour fields, edges and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3))
    for c in range(3):
        fx, fy, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        image[..., c] = 128 + 70 * np.sin(2 * np.pi * fx * x / width + phase) * np.cos(
            2 * np.pi * fy * y / height
        )
    cx, cy, r = (
        rng.uniform(0.3, 0.7) * width,
        rng.uniform(0.3, 0.7) * height,
        0.25 * min(width, height),
    )
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    image[disc] = 0.5 * image[disc] + 0.5 * rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def reference_images(seed: int = 0) -> list[np.ndarray]:
    """The pictures of :data:`SIZES`, picture ``i`` made from ``seed + i``."""
    return [reference_image(w, h, seed + i) for i, (w, h) in enumerate(SIZES)]
