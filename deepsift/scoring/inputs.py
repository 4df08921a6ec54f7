"""What to score: files, folders, glob patterns, list files and zip/tar archives, lazily.

:func:`iter_items` turns the command line's inputs into :class:`WorkItem` s one at
a time, so a million paths never sit in memory as images (nor even as one list):

* a **folder** is walked recursively in name order; symbolic links are followed,
  but a directory already visited (a symlink loop, or two links to one folder) is
  not entered again, and gets an error record instead;
* a **glob pattern** (``"shots/**/*.jpg"``, quoted so the shell leaves it alone)
  is expanded lazily; ``**`` matches any depth;
* ``@LIST`` (or ``--from-file LIST``) names a text file with one path per line
  (``--null``: NUL-separated, for names that hold newlines); relative paths are
  taken from the current directory; blank lines are ignored;
* a **zip or tar archive** (recognised by content; tar may be gzip, bzip2 or xz
  compressed) is read as a stream: each member's bytes go to the decoder in
  memory and nothing is ever written to disk, so a member named ``../x`` escapes
  nowhere. A member is read at most ``max_member_bytes`` + 1 bytes far, whatever
  its header claims, so a zip bomb costs that much and no more; an archive stops
  expanding after ``max_archive_bytes`` in all. Links and device files inside
  tar archives are not followed. Nested archives are not opened.
* anything that cannot be read (missing path, broken symlink, symlink loop,
  permission denied, FIFO or device, corrupt archive) becomes an item that
  carries its ``error``, so every input gets a record.

Videos and images are told apart later, by content, in :mod:`.prepare`.
"""

from __future__ import annotations

import bz2
import errno
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from deepsift.core.errors import UserError

HEAD_BYTES = 512
DEFAULT_MAX_MEMBER_BYTES = 256 * 2**20
DEFAULT_MAX_ARCHIVE_BYTES = 16 * 2**30


@dataclass
class WorkItem:
    """One thing to score: a file, or an archive member whose bytes are already read.

    ``error`` set: the item failed before decoding (its record is written as is).
    ``member_index`` is the member's position in its archive, which keeps two
    members with the same name apart.
    """

    path: str
    member: str | None = None
    member_index: int | None = None
    data: bytes | None = None
    error: str | None = None

    def key(self) -> bytes:
        return item_key(self.path, self.member, self.member_index)


def item_key(
    path: str, member: str | None = None, member_index: int | None = None, frame: int | None = None
) -> bytes:
    """A 16-byte identity of an output record, the same whether written or read back.

    Names that are not valid UTF-8 are held as surrogate escapes by Python and
    written as ``\\udcXX`` escapes; both sides of the comparison use that form.
    """
    text = "\0".join(
        (path, member or "", "" if member_index is None else str(member_index), _opt(frame))
    )
    return hashlib.blake2b(text.encode("utf-8", "backslashreplace"), digest_size=16).digest()


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


@dataclass
class InputOptions:
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    null_separated: bool = False
    #: False when only counting: archive members are listed but not read
    read_members: bool = True
    #: files never enumerated (real paths): the run's own output and summary
    exclude: frozenset[str] = frozenset()


# -- sniffing -------------------------------------------------------------------
_IMAGE_BRANDS = {
    b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
    b"mif1", b"msf1", b"avif", b"avis", b"crx ", b"jxl ",
}  # fmt: skip


def sniff(head: bytes) -> str:
    """``zip``, ``tar``, ``gzip``, ``bzip2``, ``xz``, ``video`` or ``other``, from the first bytes."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if is_video_head(head):
        return "video"
    return "other"


def is_video_head(head: bytes) -> bool:
    """Common video containers: MP4/MOV/3GP, AVI, Matroska/WebM, FLV, MPEG-PS/TS, ASF, Ogg."""
    if head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:4] == b"\x1a\x45\xdf\xa3"
        or head[:4] == b"FLV\x01"
        or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
        or head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"
        or head[:4] == b"OggS"
    )


_DECOMPRESSORS = {
    "gzip": lambda fileobj: gzip.GzipFile(fileobj=fileobj),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}


def archive_kind(path: str, head: bytes) -> str | None:
    """``zip`` or ``tar`` when the file at ``path`` is one (compressed tars included)."""
    kind = sniff(head)
    if kind in ("zip", "tar"):
        return kind
    if kind in _DECOMPRESSORS:
        try:
            with open(path, "rb") as handle, _DECOMPRESSORS[kind](handle) as inner:
                return "tar" if inner.read(262)[257:262] == b"ustar" else None
        except (OSError, EOFError, lzma.LZMAError, zlib.error):
            return None
    return None


# -- enumeration -------------------------------------------------------------------
Skip = Callable[[bytes], bool]


def iter_items(
    inputs: Iterable[str],
    options: InputOptions | None = None,
    skip: Skip | None = None,
) -> Iterator[WorkItem]:
    """Every item named by ``inputs`` (paths, folders, patterns, ``@lists``), in order.

    ``skip(key)`` true: the item is already done (``--resume``) and is not read.
    """
    options = options or InputOptions()
    skip = skip or (lambda key: False)
    walker = _Walker(options, skip)
    for arg in inputs:
        yield from walker.argument(arg)


def read_list_file(path: str, null_separated: bool = False) -> Iterator[str]:
    """Paths listed in ``path``: one per line (or NUL-separated), blank entries ignored."""
    separator = "\0" if null_separated else "\n"
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        pending = ""
        while chunk := handle.read(1 << 16):
            pending += chunk
            *entries, pending = pending.split(separator)
            for entry in entries:
                entry = entry if null_separated else entry.rstrip("\r")
                if entry.strip():
                    yield entry
        if pending.strip() and (null_separated or pending.rstrip("\r")):
            yield pending if null_separated else pending.rstrip("\r")


MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


def read_manifest(path: str, batch_rows: int = 8192) -> Iterator[str]:
    """The ``path`` column of a CSV, JSONL or Parquet manifest, streamed batch by batch.

    CSV and Parquet go through pyarrow's streaming readers (the ``ray`` extra), JSONL
    line by line, so a manifest of millions of rows is never held in memory.
    """
    lower = path.lower()
    if lower.endswith(".jsonl"):
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                    raise UserError(
                        f"{path}: line {number} has no string 'path' field "
                        '(a JSONL manifest holds one {"path": ...} object a line)'
                    )
                yield row["path"]
        return
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(
            f'{path}: CSV/Parquet manifests need pyarrow: pip install ".[ray]"'
        ) from exc
    try:
        if lower.endswith(".parquet"):
            parquet = pq.ParquetFile(_open_binary(path))
            if "path" not in parquet.schema_arrow.names:
                raise UserError(f"{path}: the Parquet manifest has no 'path' column")
            batches = parquet.iter_batches(batch_size=batch_rows, columns=["path"])
        else:
            batches = pacsv.open_csv(
                _open_binary(path),
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                convert_options=pacsv.ConvertOptions(
                    include_columns=["path"], column_types={"path": pa.string()}
                ),
            )
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if value:
                    yield value
    except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
        raise UserError(f"{path}: not a manifest with a 'path' column ({exc})") from exc


def _is_uri(path: str) -> bool:
    return "://" in path


def _open_binary(path: str) -> Any:
    """A local path as is; a URI (s3://, gs://, file://) through pyarrow.fs.FileSystem.from_uri."""
    if not _is_uri(path):
        return path
    import pyarrow.fs

    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    return filesystem.open_input_file(inner)


def _open_text(path: str) -> IO[str]:
    if not _is_uri(path):
        return open(path, encoding="utf-8")
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8")


def check_manifest(path: str) -> None:
    """Raise the manifest's one-line error now, reading only its first batch (list files pass)."""
    if path.lower().endswith(MANIFEST_SUFFIXES) and (_is_uri(path) or os.path.isfile(path)):
        next(read_manifest(path, batch_rows=1), None)


class _Walker:
    def __init__(self, options: InputOptions, skip: Skip) -> None:
        self.options = options
        self.skip = skip
        self.visited: set[tuple[int, int]] = set()
        self.excluded_names = {os.path.basename(p) for p in options.exclude}

    def argument(self, arg: str) -> Iterator[WorkItem]:
        if arg.startswith("@") and not os.path.lexists(arg):
            yield from self.list_file(arg[1:])
        elif os.path.lexists(arg):
            yield from self.path(arg)
        elif glob.has_magic(arg):
            matched = False
            for match in glob.iglob(arg, recursive=True):
                matched = True
                yield from self.path(match)
            if not matched:
                yield from self.error(arg, "glob pattern matched no file")
        else:
            yield from self.error(arg, "no such file or directory")

    def list_file(self, path: str) -> Iterator[WorkItem]:
        try:
            entries = (
                read_manifest(path)
                if path.lower().endswith(MANIFEST_SUFFIXES)
                else read_list_file(path, self.options.null_separated)
            )
            for entry in entries:
                if os.path.lexists(entry):
                    yield from self.path(entry)
                else:
                    yield from self.error(
                        entry, "no such file or directory (listed in a list file)"
                    )
        except OSError as exc:
            yield from self.error(path, f"cannot read list file ({_os_reason(exc)})")

    def error(self, path: str, reason: str, member: str | None = None) -> Iterator[WorkItem]:
        item = WorkItem(path, member=member, error=reason)
        if not self.skip(item.key()):
            yield item

    def path(self, path: str) -> Iterator[WorkItem]:
        try:
            info = os.stat(path)
        except OSError as exc:
            yield from self.error(path, _stat_reason(path, exc))
            return
        if stat.S_ISDIR(info.st_mode):
            yield from self.directory(path, info)
        elif stat.S_ISREG(info.st_mode):
            if os.path.basename(path) in self.excluded_names and (
                os.path.realpath(path) in self.options.exclude
            ):
                return  # the output being written: not an input
            yield from self.file(path)
        else:
            yield from self.error(path, "not a regular file (FIFO, socket or device): not read")

    def directory(self, path: str, info: os.stat_result) -> Iterator[WorkItem]:
        ident = (info.st_dev, info.st_ino)
        if ident in self.visited:
            yield from self.error(
                path, "directory already visited (symlink loop or second link): not entered again"
            )
            return
        self.visited.add(ident)
        try:
            with os.scandir(path) as scan:
                names = sorted(entry.name for entry in scan)
        except OSError as exc:
            yield from self.error(path, f"cannot list directory ({_os_reason(exc)})")
            return
        for name in names:
            yield from self.path(os.path.join(path, name))

    def file(self, path: str) -> Iterator[WorkItem]:
        try:
            with open(path, "rb") as handle:
                head = handle.read(HEAD_BYTES)
        except OSError:
            head = b""  # the worker reads it again and reports the reason
        kind = archive_kind(path, head) if head else None
        if kind == "zip":
            yield from self.zip_members(path)
        elif kind == "tar":
            yield from self.tar_members(path)
        else:
            item = WorkItem(path)
            if not self.skip(item.key()):
                yield item

    # -- archives -------------------------------------------------------------------
    def _member(self, path: str, name: str, index: int) -> WorkItem | None:
        item = WorkItem(path, member=name, member_index=index)
        return None if self.skip(item.key()) else item

    def zip_members(self, path: str) -> Iterator[WorkItem]:
        limit = self.options.max_member_bytes
        total = 0
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            yield from self.error(path, f"corrupt zip archive ({_short(exc)})")
            return
        with archive:
            for index, info in enumerate(archive.infolist()):
                if info.is_dir():
                    continue
                item = self._member(path, info.filename, index)
                if item is None:
                    continue
                if not self.options.read_members:
                    yield item
                    continue
                if info.flag_bits & 0x1:
                    item.error = "encrypted archive member: not read"
                elif info.file_size > limit:
                    item.error = (
                        f"archive member expands to {info.file_size} bytes "
                        f"> --max-member-bytes {limit}: not read"
                    )
                elif total >= self.options.max_archive_bytes:
                    item.error = (
                        f"archive expanded beyond --max-archive-bytes "
                        f"{self.options.max_archive_bytes}: member not read"
                    )
                else:
                    try:
                        with archive.open(info) as member:
                            data = member.read(limit + 1)
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
                        item.error = f"corrupt archive member ({_short(exc)})"
                    except (NotImplementedError, RuntimeError) as exc:
                        item.error = f"unsupported archive member ({_short(exc)})"
                    else:
                        total += len(data)
                        if len(data) > limit:
                            item.error = (
                                f"archive member expands beyond --max-member-bytes {limit} "
                                "(its header understates its size: zip bomb?): not read"
                            )
                        else:
                            item.data = data
                yield item

    def tar_members(self, path: str) -> Iterator[WorkItem]:
        limit = self.options.max_member_bytes
        total = 0
        index = -1
        try:
            archive = tarfile.open(path, mode="r|*")  # noqa: SIM115 - closed by the with below
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            yield from self.error(path, f"corrupt tar archive ({_short(exc)})")
            return
        current: WorkItem | None = None
        try:
            with archive:
                for info in archive:
                    index += 1
                    if info.isdir():
                        continue
                    current = self._member(path, info.name, index)
                    if current is None:
                        continue
                    if not self.options.read_members:
                        yield current
                        current = None
                        continue
                    if not info.isfile():
                        current.error = "archive member is a link or special file: not followed"
                    elif info.size > limit:
                        current.error = (
                            f"archive member is {info.size} bytes > --max-member-bytes {limit}: "
                            "not read"
                        )
                    elif total >= self.options.max_archive_bytes:
                        current.error = (
                            f"archive expanded beyond --max-archive-bytes "
                            f"{self.options.max_archive_bytes}: member not read"
                        )
                    else:
                        handle = archive.extractfile(info)
                        data = handle.read(limit + 1) if handle is not None else b""
                        if len(data) < info.size:
                            raise EOFError("unexpected end of data")
                        current.data = data
                        total += len(data)
                    item, current = current, None
                    yield item
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            if current is not None:
                current.error = f"corrupt archive member ({_short(exc)})"
                yield current
            else:
                yield from self.error(
                    path, f"corrupt tar archive after {index + 1} entries ({_short(exc)})"
                )


def _stat_reason(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return "broken symbolic link"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return _os_reason(exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    return exc.strerror or type(exc).__name__


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
