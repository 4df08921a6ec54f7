"""C2PA Content Credentials, read offline with ``c2pa-python`` (the Rust c2pa-rs SDK).

A C2PA manifest is a signed statement embedded in the file (JPEG APP11, PNG
``caBX``, WebP ``C2PA`` chunk, ...) saying who produced the picture and how.
Generators that sign their output (Adobe Firefly, OpenAI, Google, Microsoft,
Meta and others) record a ``c2pa.created`` action whose ``digitalSourceType`` is
IPTC's ``trainedAlgorithmicMedia``.

Reading never touches the network: remote manifests and OCSP revocation checks
are switched off (``verify.remote_manifest_fetch`` and ``verify.ocsp_fetch``).
``valid`` says the signature and the content hashes check out, i.e. the pixels
are those that were signed; ``trusted`` says the signing certificate chains to a
trust anchor passed in ``trust_anchors_pem`` (the C2PA trust list, say). With no
anchors configured nothing is ``trusted`` and the validation codes include
``signingCredential.untrusted``: anyone can sign anything with a self-made
certificate, so an untrusted manifest is a claim, not proof.
"""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

from deepsift.scoring.provenance._text import MAX_ITEMS, clip, reason

# IPTC digital source types that mean "made by generative AI".
GENERATIVE_SOURCE_TYPES = frozenset(
    {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"}
)

_MIME = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
    "HEIF": "image/heif",
    "BMP": "image/bmp",
}

_contexts: dict[tuple[int, str | None], Any] = {}
_contexts_lock = threading.Lock()


def _context(c2pa: Any, trust_anchors_pem: str | None) -> Any:
    """One offline reading context per process and trust configuration."""
    key = (os.getpid(), trust_anchors_pem)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            settings: dict[str, Any] = {
                "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
            }
            if trust_anchors_pem:
                settings["trust"] = {"user_anchors": trust_anchors_pem}
            ctx = c2pa.Context.from_dict(settings)
            _contexts[key] = ctx
        return ctx


def source_type_name(uri: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> last segment."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _agent_name(agent: Any) -> str | None:
    if isinstance(agent, dict):
        name = agent.get("name")
        version = agent.get("version")
        return clip(f"{name} {version}" if name and version else name) if name else None
    return clip(agent) if agent else None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    infos = manifest.get("claim_generator_info")
    if isinstance(infos, list) and infos:
        return _agent_name(infos[0])
    generator = manifest.get("claim_generator")
    return clip(generator) if generator else None


def _actions(manifest: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for assertion in manifest.get("assertions") or []:
        label = str(assertion.get("label", ""))
        if not label.startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            entry = {"action": clip(action.get("action", ""), 100)}
            if action.get("digitalSourceType"):
                entry["digitalSourceType"] = clip(action["digitalSourceType"], 200)
            agent = _agent_name(action.get("softwareAgent"))
            if agent:
                entry["softwareAgent"] = agent
            out.append(entry)
            if len(out) >= MAX_ITEMS:
                return out
    return out


def summarise_store(store: dict[str, Any]) -> dict[str, Any]:
    """The fields a moderator needs from a c2pa-rs manifest-store JSON."""
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "", {})
    state = store.get("validation_state")
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = results.get("failure")
    if failures is None:  # older SDKs: a flat list of problems
        failures = store.get("validation_status") or []
    codes = sorted({clip(item.get("code", ""), 100) for item in failures if item.get("code")})
    signature = active.get("signature_info") or {}
    actions = _actions(active)
    source_types = sorted(
        {source_type_name(a["digitalSourceType"]) for a in actions if "digitalSourceType" in a}
    )
    return {
        "status": "present",
        "validation_state": state,
        "valid": state in ("Valid", "Trusted"),
        "trusted": state == "Trusted",
        "validation_codes": codes[:MAX_ITEMS],
        "claim_generator": _claim_generator(active),
        "title": clip(active["title"]) if active.get("title") else None,
        "actions": actions,
        "digital_source_types": source_types,
        "generative_ai": any(name in GENERATIVE_SOURCE_TYPES for name in source_types),
        "signer": clip(signature["common_name"]) if signature.get("common_name") else None,
        "issuer": clip(signature["issuer"]) if signature.get("issuer") else None,
        "signing_time": clip(signature["time"], 64) if signature.get("time") else None,
        "signature_alg": clip(signature["alg"], 32) if signature.get("alg") else None,
        "manifests": len(manifests),
    }


def read_c2pa(raw: bytes, fmt: str | None, trust_anchors_pem: str | None = None) -> dict[str, Any]:
    """Read and validate the embedded C2PA manifest store of ``raw``; never raises."""
    try:
        import c2pa
    except ImportError:
        return {"status": "not_checked", "reason": "c2pa-python is not installed"}
    mime = _MIME.get((fmt or "").upper())
    try:
        ctx = _context(c2pa, trust_anchors_pem)
        reader = c2pa.Reader.try_create(mime, io.BytesIO(raw), None, ctx)
        if reader is None:
            return {"status": "absent"}
        with reader:
            store = json.loads(reader.json())
    except Exception as exc:
        name = type(exc).__name__
        if "NotSupported" in name:  # not a format c2pa-rs reads, or not an image at all
            return {"status": "not_checked", "reason": clip(str(exc), 200)}
        if "RemoteManifest" in name:
            return {"status": "remote", "reason": "manifest stored remotely; not fetched (offline)"}
        if "ManifestNotFound" in name or "JumbfNotFound" in str(exc):
            return {"status": "absent"}
        return {"status": "error", "reason": clip(str(exc), 200) if "C2pa" in name else reason(exc)}
    return summarise_store(store)
