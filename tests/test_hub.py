"""deepsift.core.hub: verified downloads from loopback servers, clear one-line errors offline."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deepsift.core.errors import UserError
from deepsift.core.hub import download, hub_reachable, sha256_file, weights_dir

PAYLOAD = b"deepsift test weights\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (loopback only) serving a temporary folder."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "w.pth").write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_verifies_and_caches(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    cache = tmp_path / "cache"
    path = download(f"{base}/w.pth", PAYLOAD_SHA, cache_dir=cache)
    assert path == cache / "w.pth"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == ["w.pth"]  # no temporary files left
    # a second call uses the cache: it works with the file gone from the server
    (root / "w.pth").unlink()
    assert download(f"{base}/w.pth", PAYLOAD_SHA.upper(), cache_dir=cache) == path


def test_download_filename_and_env_cache_dir(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    monkeypatch.setenv("DEEPSIFT_CACHE_DIR", str(tmp_path / "root"))
    assert weights_dir() == tmp_path / "root" / "weights"
    path = download(f"{base}/w.pth", PAYLOAD_SHA, filename="renamed.pth")
    assert path == tmp_path / "root" / "weights" / "renamed.pth"
    assert sha256_file(path) == PAYLOAD_SHA


def test_download_sha_mismatch_deletes(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(UserError) as info:
        download(f"{base}/w.pth", wrong, cache_dir=cache, option_hint="detector.weights=/x/w.pth")
    message = str(info.value)
    assert "\n" not in message
    assert wrong in message and PAYLOAD_SHA in message
    assert "detector.weights=/x/w.pth" in message
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "w.pth").write_bytes(b"truncated")
    path = download(f"{base}/w.pth", PAYLOAD_SHA, cache_dir=cache)
    assert path.read_bytes() == PAYLOAD


def test_download_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    path = download(source.as_uri(), PAYLOAD_SHA, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD


def test_http_error_is_one_line(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(UserError, match=r"could not download .*missing\.pth \(HTTP 404"):
        download(f"{base}/missing.pth", None, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_host_fails_fast(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/NPR.pth"
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        download(
            url,
            PAYLOAD_SHA,
            cache_dir=tmp_path / "cache",
            timeout=3,
            option_hint="detector.weights=/path/to/NPR.pth",
        )
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {url} (")
    assert message.endswith(
        "download it elsewhere and pass the local file with detector.weights=/path/to/NPR.pth"
    )
    assert list((tmp_path / "cache").iterdir()) == []


def test_hub_reachable(server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    port = int(server[0].rsplit(":", 1)[1])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_reachable("127.0.0.1", port, timeout=2)
    assert not hub_reachable("127.0.0.1", closed_port(), timeout=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert not hub_reachable("127.0.0.1", port, timeout=2)
    assert time.monotonic() - start < 0.5
