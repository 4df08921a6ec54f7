"""Output records: the schema, the JSONL / CSV writer, and reading them back for ``--resume``.

Every record has every field below, in this order, ``null`` (empty in CSV) when
it does not apply. JSONL writes one JSON object per line, UTF-8, with newlines
and control characters in names escaped by JSON itself; CSV quotes fields as
RFC 4180 does (a name holding a newline stays one quoted field), writes the
nested fields as JSON text, and puts a ``'`` before any text cell that starts with a
tab, a carriage return or one of ``= + - @ '``, so that no spreadsheet runs a file
name as a formula (``--resume`` strips it again; JSONL keeps names as they are). Bytes of a file name that are not valid UTF-8 are
written as ``\\udcXX`` escapes (JSON reads them back as the same name).

``path``
    the input as enumerated: a file given or found in a folder (folder + name),
    or the archive holding ``member``.
``member``
    the archive member's name, exactly as stored (``../x.png`` included: nothing is
    ever extracted, so no name can escape); null outside archives.
``member_index``
    the member's position in its archive (0-based; keeps two members with one
    name apart); null outside archives.
``frame``
    the frame index of a per-frame record (``--frame-records``), or the first frame of a
    clip record; null otherwise.
``kind``
    ``image``, ``animation`` (animated GIF/WebP/PNG), ``video``, ``frame``
    (one sampled frame of a video or animation, written before its item's record), or
    ``clip`` (one clip of a video scored by a clip detector, written before the video's
    record).
``sha256``
    hex SHA-256 of the file's (or member's) bytes; null when they could not be read.
``bytes``
    the size of those bytes.
``format``
    the format recognised from the content, never the extension (Pillow's name:
    ``JPEG``, ``PNG``, ``WEBP``...; the codec FourCC for videos).
``width``
    width in pixels as displayed (after EXIF rotation); a video's frame width.
``height``
    height in pixels, likewise.
``n_frames``
    frames in an animation or video (null for still images).
``score``
    probability that the item is synthetic, in [0, 1]: the detector's, or the
    ensemble's combination (mean of the members' probabilities by default); for
    face detectors the maximum over faces; for videos and animations the mean over
    sampled frames (``--video-aggregation``). Null when nothing could be scored.
``band``
    ``authentic``, ``uncertain``, ``likely_synthetic`` or ``synthetic``, from the
    thresholds of ``--calibration`` (or the defaults 0.2 / 0.5 / 0.9).
``calibrated``
    true when the band comes from a calibration file; false: default thresholds,
    which are not error rates of anything.
``scores``
    each ensemble member's probability, by label (one entry for a single detector);
    a member that found nothing to score (no face) is null.
``faces``
    for face detectors: one entry per scored face, largest first: ``box`` (the
    face detector's x0, y0, x1, y1 in image pixels), ``crop`` (the region the crop
    was cut from, cut as the detector's training faces were: the bounding box x0,
    y0, x1, y1 of that square in image pixels, clipped to the image; an aligned
    crop's square is rotated and scaled onto the face's landmarks, so this box
    encloses it and is wider than the square itself), its ``confidence``,
    ``score`` and per-member ``scores``; when face members cut faces differently,
    ``crops`` gives each member's region (``crop`` is the first one's). Null when
    no member scores faces; ``[]`` when none was usable (see ``not_applicable``).
``not_applicable``
    why there is no score although the file was read: ``no face found``,
    ``face too small (< N px)`` (``... in every sampled frame`` for videos).
``unstable``
    with ``--stability``: true when a JPEG-90 re-encoding or a 0.75x resize of
    the image lands in another band; null when not checked.
``stability``
    with ``--stability``: the scores of those two copies, ``jpeg90`` and ``resize0.75``.
``frames``
    videos and animations: the sampled frames, each with its ``frame`` index,
    ``score`` and, for face detectors, ``faces``.
``provenance``
    signals read offline from the bytes: ``c2pa`` (an embedded C2PA manifest and
    its validation), ``watermark`` (the Stable Diffusion / SDXL invisible
    watermark), ``metadata`` (AUTOMATIC1111 ``parameters``, ComfyUI
    ``prompt``/``workflow``, EXIF Software/UserComment, XMP/IPTC
    digitalSourceType), and ``indicators`` (one line per "made by AI" claim). These
    are claims that can be stripped or forged: their absence proves nothing; in
    particular the SD watermark does not survive JPEG with 4:2:0 chroma
    subsampling (what most platforms apply) nor a resize. Null for videos, with
    ``--no-provenance`` or when the reader is not installed.
``pdq``
    the PDQ perceptual hash of the image (``hash``: 64 hex digits, ``quality``:
    0-100), for hash-sharing programmes such as StopNCII; null for videos, with
    ``--no-pdq`` or when unavailable.
``duplicate_of``
    for a file whose bytes equal an earlier item's (same sha256): that item's
    ``path`` and ``member``; the verdict fields are copied from it, not recomputed.
``error``
    why the item could not be scored at all (empty file, not an image, truncated
    or corrupt, decompression bomb, permission denied, broken symlink, symlink
    loop, corrupt or oversized archive member, ...); null otherwise.
``clip``
    a ``kind: clip`` record's clip (clip detectors, ``--clips``): its ``clip`` number,
    ``window`` (which of the evenly spaced windows), ``track`` (which face track in that
    window), the video ``frames`` it holds, and per frame the face detector's ``boxes``
    and the ``crops`` regions (null with ``--faces off``); null otherwise.
``clips``
    a video scored by a clip detector: one entry per clip (``clip``, ``window``,
    ``track``, ``frames``, ``score``); null otherwise.

The two clip fields came after the others and are the last columns; a JSONL
output written before them is continued by ``--resume`` (they read back null); a CSV one
is not (its header differs).

Records are appended in whole lines and flushed after each batch, so a run
killed at any moment (even with SIGKILL) leaves complete records plus, at
worst, one torn last line. :class:`OutputFile` with ``resume=True`` drops that
torn line (and the frame or clip records of a video whose own record was not written)
and returns what is done, so the resumed run writes every item exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsift.core.errors import UserError
from deepsift.scoring.inputs import item_key

#: every record's fields, in order (see the README section "Output of score.py")
FIELDS: tuple[str, ...] = (
    "path",
    "member",
    "member_index",
    "frame",
    "kind",
    "sha256",
    "bytes",
    "format",
    "width",
    "height",
    "n_frames",
    "score",
    "band",
    "calibrated",
    "scores",
    "faces",
    "not_applicable",
    "unstable",
    "stability",
    "frames",
    "provenance",
    "pdq",
    "duplicate_of",
    "error",
    "clip",
    "clips",
)
#: fields added after the first release: a JSONL record without them (an older output,
#: continued with ``--resume``) reads back with them null
LATER_FIELDS: frozenset[str] = frozenset({"clip", "clips"})
#: kinds of the records written before their item's own record (parts of a video)
PART_KINDS: frozenset[str] = frozenset({"frame", "clip"})
_INT = {"member_index", "frame", "bytes", "width", "height", "n_frames"}
_FLOAT = {"score"}
_BOOL = {"calibrated", "unstable"}
_JSON = {
    "scores",
    "faces",
    "stability",
    "frames",
    "provenance",
    "pdq",
    "duplicate_of",
    "clip",
    "clips",
}


def new_record(**fields: Any) -> dict[str, Any]:
    """A record with every field, ``None`` unless given."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise KeyError(f"not record fields: {sorted(unknown)}")
    return {name: fields.get(name) for name in FIELDS}


def record_key(record: dict[str, Any]) -> bytes:
    return item_key(record["path"], record["member"], record["member_index"], record["frame"])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def encode_jsonl(record: dict[str, Any]) -> bytes:
    text = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


#: a text cell starting with one of these is read as a formula by spreadsheets (an
#: attacker names an archive member ``=HYPERLINK(...)``): CSV writes it after a ``'``,
#: as OWASP advises, and ``'`` itself is escaped the same way so the name reads back exactly
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _JSON:
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)
    if name in _BOOL:
        return "true" if value else "false"
    if name in _FLOAT:
        return repr(float(value))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def encode_csv(record: dict[str, Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [_csv_cell(name, record.get(name)) for name in FIELDS]
    )
    return buffer.getvalue().encode("utf-8", "backslashreplace")


def decode_csv_row(row: list[str]) -> dict[str, Any]:
    """A CSV row (as :func:`encode_csv` wrote it) back as a typed record."""
    if len(row) != len(FIELDS):
        raise ValueError(f"{len(row)} columns instead of {len(FIELDS)}")
    out: dict[str, Any] = {}
    for name, cell in zip(FIELDS, row, strict=True):
        if cell == "":
            out[name] = None
        elif name in _JSON:
            out[name] = json.loads(cell)
        elif name in _INT:
            out[name] = int(cell)
        elif name in _FLOAT:
            out[name] = float(cell)
        elif name in _BOOL:
            out[name] = cell == "true"
        else:
            out[name] = cell[1:] if cell.startswith("'") else cell
    return out


def _physical_lines(handle: io.BufferedReader, start: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` pairs of a binary file from ``start`` (the last may lack ``\\n``)."""
    handle.seek(start)
    offset = start
    for line in handle:
        yield offset, line
        offset += len(line)


def iter_csv_records(
    handle: io.BufferedReader, start: int
) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """``(start, end, record)`` per CSV row from byte ``start``; ``None`` for a torn last row."""
    lines = _physical_lines(handle, start)
    state = {"end": start, "complete": True}

    def text_lines() -> Iterator[str]:
        for offset, line in lines:
            state["end"] = offset + len(line)
            state["complete"] = line.endswith(b"\n")
            yield line.decode("utf-8", "surrogateescape")

    reader = csv.reader(text_lines(), strict=True)
    position = start
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield position, state["end"], None
            return
        try:
            record = decode_csv_row(row) if state["complete"] else None
        except ValueError:
            record = None
        yield position, state["end"], record
        position = state["end"]


def iter_jsonl_records(
    handle: io.BufferedReader, start: int = 0
) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    for offset, line in _physical_lines(handle, start):
        record = None
        if line.endswith(b"\n"):
            try:
                parsed = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and set(FIELDS) - LATER_FIELDS <= set(parsed):
                record = {**dict.fromkeys(LATER_FIELDS), **parsed}
        yield offset, offset + len(line), record


def csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(FIELDS)
    return buffer.getvalue().encode("utf-8")


@dataclass
class ResumeState:
    """What an existing output already holds."""

    done: set[bytes] = field(default_factory=set)
    #: sha256 (raw 32 bytes) of each original record -> its byte offset in the output
    sha_index: dict[bytes, int] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)  # only kept when asked
    n_items: int = 0
    truncated_bytes: int = 0


def format_for(path: str | Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("jsonl", "csv", "parquet"):
            raise UserError(f"--format {fmt!r}: use jsonl, csv or parquet")
        return fmt
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    return "csv" if name.endswith(".csv") else "jsonl"


def parquet_schema() -> Any:
    """The Parquet schema of a record: :data:`FIELDS` in order, integers int64, ``score``
    float64, the flags bool, the nested fields JSON text (as in CSV), the rest strings."""
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name in _INT:
            return pa.int64()
        if name in _FLOAT:
            return pa.float64()
        if name in _BOOL:
            return pa.bool_()
        return pa.string()

    return pa.schema([pa.field(name, kind(name), nullable=True) for name in FIELDS])


def _parquet_cell(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _JSON:  # ASCII JSON: an undecodable name in it reads back exactly
        return json.dumps(_finite(value), ensure_ascii=True, allow_nan=False)
    if name in _FLOAT:
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):  # Parquet strings are UTF-8: undecodable name bytes are
        # written as \\udcXX text, as CSV writes them
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def write_parquet(records: Iterator[dict[str, Any]], path: str | Path, rows: int = 4096) -> int:
    """Write ``records`` to one Parquet file at ``path`` atomically (tmp + os.replace), in
    row groups of ``rows``, never holding more than one group; the number written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    count = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            columns = {n: [_parquet_cell(n, r.get(n)) for r in batch] for n in FIELDS}
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            batch.clear()

        for record in records:
            batch.append(record)
            count += 1
            if len(batch) >= rows:
                flush()
        if batch or count == 0:
            flush()
    os.replace(tmp, path)
    return count


def read_parquet_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a Parquet file (or dataset folder) :func:`write_parquet` wrote, as the
    JSONL writer's dicts (nested fields parsed back), one row group at a time."""
    import pyarrow.dataset as pads

    for batch in pads.dataset(str(path), format="parquet").to_batches():
        for row in batch.to_pylist():
            yield {
                n: (json.loads(row[n]) if n in _JSON and row[n] is not None else row[n])
                for n in FIELDS
            }


class ParquetOutput:
    """``--format parquet``: records are staged in an :class:`OutputFile` JSONL
    (``<out>.part.jsonl``, which ``--resume`` continues exactly once, and which duplicates
    read their originals back from); :meth:`finish` converts it to --out atomically at the
    end of a complete run. An interrupted run leaves --out untouched."""

    format = "parquet"

    def __init__(
        self,
        path: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        on_record: Any = None,
    ) -> None:
        self.path = Path(path)
        self.staging = self.path.with_name(self.path.name + ".part.jsonl")
        if self.path.exists() and not overwrite and not (resume and self.staging.exists()):
            raise UserError(
                f"{self.path} already exists"
                + (" and is complete" if resume else "; pass --overwrite to replace it")
            )
        self.file = OutputFile(
            self.staging, "jsonl", resume=resume, overwrite=overwrite, on_record=on_record
        )
        self.state = self.file.state

    def write(self, records: list[dict[str, Any]]) -> list[int]:
        return self.file.write(records)

    def read_at(self, offset: int) -> dict[str, Any]:
        return self.file.read_at(offset)

    def sync(self) -> None:
        self.file.sync()

    def close(self) -> None:
        self.file.close()

    def finish(self) -> None:
        """Write --out from the staged records and remove the staging file."""
        self.file.close()
        with open(self.staging, "rb") as handle:
            write_parquet((r for _, _, r in iter_jsonl_records(handle) if r is not None), self.path)
        self.staging.unlink()


def open_output(
    path: str | Path,
    fmt: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_record: Any = None,
) -> OutputFile | ParquetOutput:
    """The sink for --out in --format (from the suffix when not given)."""
    if format_for(path, fmt) == "parquet":
        return ParquetOutput(path, resume=resume, overwrite=overwrite, on_record=on_record)
    return OutputFile(path, fmt, resume=resume, overwrite=overwrite, on_record=on_record)


class OutputFile:
    """Append-only record writer with exactly-once resume (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        fmt: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        on_record: Any = None,
    ) -> None:
        self.path = Path(path)
        self.format = format_for(self.path, fmt)
        self.state = ResumeState()
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise UserError(
                f"{self.path} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exists and resume:
            self._scan(on_record)
            self.handle = open(self.path, "ab")  # noqa: SIM115 - kept open for the whole run
        else:
            self.handle = open(self.path, "wb")  # noqa: SIM115
            if self.format == "csv":
                self.handle.write(csv_header())
                self.handle.flush()
        self.reader = open(self.path, "rb")  # noqa: SIM115 - reads originals back for duplicates

    def _records(self, handle: io.BufferedReader) -> Iterator[tuple[int, int, dict | None]]:
        if self.format == "csv":
            header = handle.readline()
            if header != csv_header():
                raise UserError(
                    f"{self.path} is not a CSV written by this score.py (other columns); "
                    "write to another --out"
                )
            yield from iter_csv_records(handle, len(header))
        else:
            yield from iter_jsonl_records(handle, 0)

    def _scan(self, on_record: Any) -> None:
        size = self.path.stat().st_size
        good_end = None
        pending_frames = 0
        with open(self.path, "rb") as handle:
            for start, end, record in self._records(handle):
                if good_end is None:
                    good_end = start
                if record is None:
                    if end < size:
                        raise UserError(
                            f"{self.path}: the record at byte {start} is not a complete "
                            f"{self.format.upper()} record and is not the last; fix or remove it "
                            "before --resume"
                        )
                    break
                self.state.done.add(record_key(record))
                if record.get("kind") in PART_KINDS:
                    pending_frames += 1
                    continue
                pending_frames = 0
                good_end = end
                self.state.n_items += 1
                sha = record.get("sha256")
                if sha and not record.get("duplicate_of"):
                    self.state.sha_index.setdefault(bytes.fromhex(sha), start)
                if on_record is not None:
                    on_record(record)
        if good_end is None:  # header only (CSV) or empty
            return
        if good_end < size:
            # a torn last line, or frame records whose video record was never written:
            # their keys are forgotten so they are scored again
            with open(self.path, "rb") as handle:
                tail = list(self._records_from(handle, good_end))
            for record in tail:
                self.state.done.discard(record_key(record))
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
            self.state.truncated_bytes = size - good_end

    def _records_from(self, handle: io.BufferedReader, start: int) -> Iterator[dict[str, Any]]:
        rows = (
            iter_csv_records(handle, start)
            if self.format == "csv"
            else iter_jsonl_records(handle, start)
        )
        for _, _, record in rows:
            if record is not None:
                yield record

    def write(self, records: list[dict[str, Any]]) -> list[int]:
        """Append ``records`` in one write and flush; their byte offsets."""
        encode = encode_csv if self.format == "csv" else encode_jsonl
        chunks = [encode(record) for record in records]
        offset = self.handle.tell()
        offsets = []
        for chunk in chunks:
            offsets.append(offset)
            offset += len(chunk)
        self.handle.write(b"".join(chunks))
        self.handle.flush()
        return offsets

    def read_at(self, offset: int) -> dict[str, Any]:
        """The record written at byte ``offset`` (to copy an original into its duplicate)."""
        for record in self._records_from(self.reader, offset):
            return record
        raise ValueError(f"no record at byte {offset} of {self.path}")

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
        self.reader.close()
