"""Any folder tree of ``0_real`` / ``1_fake`` images (the CNNDetection convention).

Layout, under ``root``::

    <split>/0_real/*.png            <split>/1_fake/*.png
    <split>/<generator>/0_real/...  <split>/<generator>/1_fake/...   (per-generator sets)
    <split>/<generator>/<class>/0_real/...                           (ForenSynths classes)

``split_dirs`` maps deepsift's split names to folder names (for example
``{"train": "train", "val": "val", "test": "test"}``). The first folder level
under a split that is not ``0_real``/``1_fake`` names the generator.
"""

from __future__ import annotations

from pathlib import Path

from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL, Record

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
CLASS_DIRS = {"0_real": REAL, "1_fake": FAKE}


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (by suffix, case-insensitive), sorted for determinism."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


class FolderTree:
    """Records from a ``0_real`` / ``1_fake`` folder tree (see the module docstring)."""

    name = "folder"

    def __init__(
        self, root: str, split_dirs: dict[str, str] | None = None, name: str | None = None
    ) -> None:
        self.root = Path(root).expanduser() if root else None
        self.split_dirs = split_dirs or {"train": "train", "val": "val", "test": "test"}
        if name:
            self.name = name

    def records(self, split: str) -> list[Record]:
        if self.root is None or not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder; pass data.root=<folder holding {'/'.join(self.split_dirs.values())}>"
            )
        if split not in self.split_dirs:
            raise UserError(
                f"split {split!r} is not configured; data.split_dirs has {sorted(self.split_dirs)}"
            )
        base = self.root / self.split_dirs[split]
        if not base.is_dir():
            raise UserError(
                f"split folder {base} does not exist; expected {self.root}/{self.split_dirs[split]}/[<generator>/]0_real|1_fake"
            )
        records = []
        for class_dir in sorted(p for p in base.rglob("*") if p.is_dir() and p.name in CLASS_DIRS):
            parts = class_dir.relative_to(base).parts
            generator = parts[0] if len(parts) > 1 else None
            label = CLASS_DIRS[class_dir.name]
            for path in list_images(class_dir):
                records.append(
                    Record(
                        str(path),
                        label,
                        generator="real" if label == REAL else generator or "fake",
                        source=str(path.relative_to(self.root)),
                    )
                )
        if not records:
            raise UserError(
                f"no images under {base}: expected [<generator>/]0_real and 1_fake folders of images"
            )
        return records
