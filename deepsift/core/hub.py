"""Weight downloads that verify what they fetch and fail in one clear line offline.

* :func:`download` streams a URL into deepsift's cache, checks its SHA-256 and
  renames it into place atomically, so a killed download never leaves a
  half-written file under the final name. An unreachable host, an HTTP error or
  a timeout becomes a one-line :class:`~deepsift.core.errors.UserError` that says
  how to pass a file fetched elsewhere; it never hangs (``timeout`` bounds every
  socket operation).
* :func:`hub_reachable` answers "can we reach the Hugging Face hub?" within
  seconds, so callers can refuse early instead of sitting through a library's
  retry loop.

Only the standard library does the network work (``urllib``, ``socket``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from deepsift.core.errors import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}


def cache_root() -> Path:
    """``$DEEPSIFT_CACHE_DIR`` or the platform's user cache folder for deepsift."""
    root = os.environ.get("DEEPSIFT_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("deepsift"))


def weights_dir() -> Path:
    """Where :func:`download` keeps weight files by default: ``<cache root>/weights``."""
    return cache_root() / "weights"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _resolve(host: str, port: int, timeout: float) -> list[tuple] | None:
    """``getaddrinfo`` bounded by ``timeout`` (the resolver itself has no timeout)."""
    box: dict[str, list[tuple]] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            box["infos"] = []

    thread = threading.Thread(target=work, name=f"resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return box.get("infos") or None


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` means offline for every host: False at once, no network.
    Name resolution is bounded by the same timeout.
    """
    if hf_offline():
        return False
    infos = _resolve(host, port, timeout)
    if not infos:
        return False
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def _reason(exc: BaseException) -> str:
    """A short, single-line reason for a failed download."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            text = "timed out"
        elif isinstance(reason, OSError) and reason.strerror:
            text = reason.strerror
        else:
            text = str(reason)
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


def download(
    url: str,
    sha256: str | None,
    filename: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = 10,
    option_hint: str | None = None,
) -> Path:
    """Fetch ``url`` into the cache (once) and return the local path.

    Args:
        url: ``https://``, ``http://`` or ``file://`` address.
        sha256: expected hex digest; a cached or downloaded file that does not
            match is deleted. ``None`` skips verification (use only for files
            whose digest is not published).
        filename: name in the cache; the last part of the URL path by default.
        cache_dir: folder for the file; :func:`weights_dir` by default
            (``$DEEPSIFT_CACHE_DIR/weights`` when that variable is set).
        timeout: seconds allowed for connecting and for each read.
        option_hint: how the user passes a local file instead, named in the
            error, e.g. ``detector.weights=/path/to/NPR.pth``.

    Raises:
        UserError: the host cannot be reached, the server answers with an error,
            or the file's SHA-256 is not ``sha256``.
    """
    name = filename or Path(urllib.parse.urlparse(url).path).name or "download"
    folder = Path(cache_dir) if cache_dir is not None else weights_dir()
    target = folder / name
    expected = sha256.strip().lower() if sha256 else None
    hint = option_hint or f"detector.weights=/path/to/{name}"

    if target.is_file():
        if expected is None:
            return target
        got = sha256_file(target)
        if got == expected:
            return target
        log.warning(
            "cached %s has sha256 %s, expected %s; downloading it again", target, got, expected
        )
        target.unlink(missing_ok=True)

    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "deepsift"})
            with (
                urllib.request.urlopen(request, timeout=timeout) as response,
                os.fdopen(fd, "wb") as out,
            ):
                fd = -1  # closed by the with statement from here on
                for block in iter(lambda: response.read(CHUNK), b""):
                    digest.update(block)
                    out.write(block)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError and timeouts are OSErrors; ValueError: a malformed URL
            raise UserError(
                f"could not download {url} ({_reason(exc)}); download it elsewhere and pass "
                f"the local file with {hint}"
            ) from None
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise UserError(
                f"downloaded {url} has sha256 {got}, expected {expected}; the file is corrupt or "
                f"changed upstream, so it was deleted: download it elsewhere, check it, and pass "
                f"the local file with {hint}"
            )
        os.replace(tmp, target)
    finally:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    log.info("saved %s (sha256 %s)", target, got)
    return target
