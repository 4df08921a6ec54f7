"""score.py inputs: folders, patterns, lists, archives as streams, and every unreadable case."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from deepsift.scoring.inputs import (
    InputOptions,
    archive_kind,
    is_video_head,
    item_key,
    iter_items,
    read_list_file,
    sniff,
)
from tests.scoring_fixtures import encode, make_tar, make_zip, noise, write_video


def _png(seed: int) -> bytes:
    return encode(Image.fromarray(noise(seed)), "PNG")


def names(items) -> list[tuple[str, str | None, str | None]]:
    return [(i.path, i.member, i.error) for i in items]


def test_folder_is_walked_recursively_in_name_order(tmp_path: Path) -> None:
    for name in ("b.png", "a/z.png", "a/c/d.png", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png(0))
    paths = [i.path for i in iter_items([str(tmp_path)])]
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == ["a/c/d.png", "a/z.png", "b.png", "c.png"]


def test_glob_pattern_list_file_and_missing_inputs(tmp_path: Path) -> None:
    for name in ("x1.png", "x2.png", "sub/x3.png", "y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png(0))
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'y.png'}\n\n{tmp_path / 'gone.png'}\r\n", encoding="utf-8")
    items = list(
        iter_items(
            [
                str(tmp_path / "**" / "x*.png"),
                f"@{listed}",
                str(tmp_path / "nope*.png"),
                "missing.png",
            ]
        )
    )
    got = [
        (os.path.relpath(i.path, tmp_path) if i.path.startswith(str(tmp_path)) else i.path, i.error)
        for i in items
    ]
    assert got == [
        ("x1.png", None),
        ("x2.png", None),
        ("sub/x3.png", None),
        ("y.png", None),
        ("gone.png", "no such file or directory (listed in a list file)"),
        ("nope*.png", "glob pattern matched no file"),
        ("missing.png", "no such file or directory"),
    ]


def test_nul_separated_list_keeps_newlines_in_names(tmp_path: Path) -> None:
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(_png(0))
    listed = tmp_path / "list0"
    listed.write_bytes(os.fsencode(str(odd)) + b"\0" + os.fsencode(str(odd)) + b"\0")
    assert list(read_list_file(str(listed), null_separated=True)) == [str(odd), str(odd)]
    items = list(iter_items([f"@{listed}"], InputOptions(null_separated=True), skip=_once()))
    assert [i.path for i in items] == [str(odd)]  # listed twice, enumerated once


def _once():
    seen: set[bytes] = set()

    def skip(key: bytes) -> bool:
        if key in seen:
            return True
        seen.add(key)
        return False

    return skip


def test_symlinks_loops_fifos_and_unreadable_directories(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "img.png").write_bytes(_png(0))
    os.symlink(tmp_path / "d", tmp_path / "d" / "back")  # loop: d/back -> d
    os.symlink(tmp_path / "d" / "img.png", tmp_path / "link.png")
    os.symlink(tmp_path / "missing.png", tmp_path / "broken.png")
    os.symlink(tmp_path / "self.png", tmp_path / "self.png")
    os.mkfifo(tmp_path / "pipe")
    items = {os.path.relpath(i.path, tmp_path): i.error for i in iter_items([str(tmp_path)])}
    assert items["d/img.png"] is None
    assert "already visited" in items["d/back"]
    assert items["link.png"] is None  # a symlink to a file is followed
    assert items["broken.png"] == "broken symbolic link"
    assert items["self.png"] == "symbolic link loop"
    assert "not a regular file" in items["pipe"]  # never opened: a FIFO would block
    assert len(items) == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unlistable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert names(iter_items([str(locked)])) == [
            (str(locked), None, "cannot list directory (permission denied)")
        ]
    finally:
        locked.chmod(0o755)


def test_zip_members_are_streamed_with_limits_and_never_written(tmp_path: Path) -> None:
    expected = make_zip(tmp_path / "a.zip")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    items = list(iter_items([str(tmp_path / "a.zip")], InputOptions(max_member_bytes=1_000_000)))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing extracted
    assert not (tmp_path.parent / "escape.png").exists()
    got = {(i.member, i.member_index): i for i in items}
    assert set(got) == set(expected)
    for key, reason in expected.items():
        item = got[key]
        if reason in (None, "not an image"):
            assert item.error is None and item.data, key
        else:
            assert reason in item.error and item.data is None, (key, item.error)
    assert got[("a.png", 0)].data != got[("a.png", 7)].data  # same name, two members, two items
    assert got[("a.png", 0)].key() != got[("a.png", 7)].key()


def test_zip_member_beyond_the_total_archive_budget(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as archive:
        for i in range(3):
            archive.writestr(f"{i}.png", _png(i))
    items = list(iter_items([str(tmp_path / "z.zip")], InputOptions(max_archive_bytes=1)))
    assert items[0].error is None
    assert all("max-archive-bytes" in i.error for i in items[1:])


def test_tar_members_streamed_links_not_followed(tmp_path: Path) -> None:
    expected = make_tar(tmp_path / "t.tar.gz")
    items = list(iter_items([str(tmp_path / "t.tar.gz")]))
    got = {(i.member, i.member_index): i.error for i in items}
    assert set(got) == set(expected)
    assert got[("link.png", 2)] and "link" in got[("link.png", 2)]
    assert not (tmp_path.parent.parent / "evil.png").exists()


def test_truncated_tar_and_oversized_tar_member(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, size in (("ok.png", 0), ("big.png", 9000), ("cut.png", 0)):
            data = _png(1) if size == 0 else b"\x00" * size
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    cut_at = data.find(_png(1), data.find(b"cut.png")) + 50
    (tmp_path / "t.tar").write_bytes(data[:cut_at])
    items = list(iter_items([str(tmp_path / "t.tar")], InputOptions(max_member_bytes=8000)))
    assert [(i.member, i.error is None) for i in items] == [
        ("ok.png", True),
        ("big.png", False),
        ("cut.png", False),
    ]
    assert "max-member-bytes" in items[1].error
    assert "corrupt archive member" in items[2].error


def test_sniffing_by_content_not_extension(tmp_path: Path) -> None:
    assert sniff(_png(0)) == "other"
    (tmp_path / "z.jpg").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "z.jpg", "w") as archive:
        archive.writestr("x.png", _png(0))
    head = (tmp_path / "z.jpg").read_bytes()[:512]
    assert archive_kind(str(tmp_path / "z.jpg"), head) == "zip"
    with tarfile.open(tmp_path / "t.bin", "w:xz") as archive:
        info = tarfile.TarInfo("x.png")
        data = _png(0)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    head = (tmp_path / "t.bin").read_bytes()[:512]
    assert archive_kind(str(tmp_path / "t.bin"), head) == "tar"
    (tmp_path / "plain.gz").write_bytes(__import__("gzip").compress(b"not a tar" * 100))
    assert (
        archive_kind(str(tmp_path / "plain.gz"), (tmp_path / "plain.gz").read_bytes()[:512]) is None
    )
    if write_video(tmp_path / "v.avi"):
        assert is_video_head((tmp_path / "v.avi").read_bytes()[:512])
    avif = encode(Image.fromarray(noise(0)), "AVIF")
    assert not is_video_head(avif[:512])  # ftyp box of an image brand


def test_item_key_is_stable_for_names_that_are_not_utf8() -> None:
    name = os.fsdecode(b"/x/bad\xff.png")
    escaped = name.encode("utf-8", "backslashreplace").decode("ascii")  # as written to CSV
    assert item_key(name) == item_key(escaped)
    assert item_key("a", "m", 0) != item_key("a", "m", 1) != item_key("a")
