"""Building blocks shared by several detectors: backbones, blending, CLIP towers, heads,
file readers. A detector module imports these, never another detector module."""
