"""Provenance signals that can be read offline, for ``score.py`` records.

``read_provenance(raw, image, fmt)`` returns a JSON-able dict with four parts.
None of them needs the network, and none of them raises on bad data: each part
that cannot be read carries ``status: "error"`` (or ``"not_checked"``) and a
short ``reason``.

- ``c2pa`` (:mod:`.c2pa_manifest`): the embedded C2PA manifest, validated:
  ``status`` present / absent / remote / not_checked / error; ``valid``,
  ``trusted``, ``validation_state``, ``validation_codes``, ``claim_generator``,
  ``actions``, ``digital_source_types``, ``generative_ai``, ``signer``,
  ``issuer``, ``signing_time``.
- ``watermark`` (:mod:`.watermark`): the Stable Diffusion 1 / 2 / SDXL invisible
  watermark: ``status`` detected / not_detected / not_checked / error, ``match``
  and per-message ``candidates`` with bit agreement.
- ``metadata`` (:mod:`.metadata`): AUTOMATIC1111 ``parameters``, ComfyUI
  ``prompt`` / ``workflow``, other PNG text, EXIF Software / Make / Model /
  UserComment, XMP digital source type and creator tool, known generator names.
- ``indicators``: one short line per signal that says "made by generative AI";
  empty when none was found.

**Every signal is a claim, and absence proves nothing.** Metadata and
watermarks are stripped by most platforms and by a screenshot; the Stable
Diffusion watermark does not survive JPEG with 4:2:0 chroma subsampling or a
resize; C2PA manifests are removed by most re-encoders and can be signed by
anyone with a self-made certificate (``trusted`` is false unless the signer
chains to a configured trust anchor). An empty ``indicators`` list means only
that the file carries no such claim.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from deepsift.scoring.provenance._text import reason, sniff_format
from deepsift.scoring.provenance.c2pa_manifest import (
    GENERATIVE_SOURCE_TYPES,
    read_c2pa,
    source_type_name,
)
from deepsift.scoring.provenance.metadata import read_metadata
from deepsift.scoring.provenance.watermark import detect_sd_watermark, size_problem

__all__ = ["read_provenance"]


def _watermark(raw: bytes, image: Image.Image | None) -> dict[str, Any]:
    if image is not None:
        return detect_sd_watermark(image)
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            problem = size_problem(*opened.size)  # before decoding any pixels
            if problem is not None:
                return problem
            decoded = opened.convert("RGB")
    except Exception as exc:
        return {"status": "not_checked", "reason": f"could not decode image: {reason(exc)}"}
    return detect_sd_watermark(decoded)


def _indicators(c2pa: dict[str, Any], watermark: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = []
    if c2pa.get("status") == "present":
        state = "valid" if c2pa.get("valid") else "invalid"
        state += ", trusted" if c2pa.get("trusted") else ", untrusted"
        for name in c2pa.get("digital_source_types", []):
            if name in GENERATIVE_SOURCE_TYPES:
                lines.append(f"c2pa ({state}): digitalSourceType {name}")
    if watermark.get("status") == "detected":
        lines.append(f"invisible watermark: {watermark['match']}")
    for label in meta.get("generator_keys", []):
        lines.append(f"png text: {label}")
    if meta.get("a1111", {}).get("source") == "exif UserComment":
        lines.append("exif UserComment: AUTOMATIC1111-style parameters")
    for uri in meta.get("xmp", {}).get("digital_source_type", []):
        if source_type_name(uri) in GENERATIVE_SOURCE_TYPES:
            lines.append(f"xmp: digitalSourceType {source_type_name(uri)}")
    for name in meta.get("generator_names", []):
        lines.append(f"metadata tool field: {name}")
    return lines


def read_provenance(
    raw: bytes,
    image: Image.Image | None = None,
    fmt: str | None = None,
    *,
    trust_anchors_pem: str | None = None,
) -> dict[str, Any]:
    """Offline provenance signals of one image file; never raises on bad data.

    ``raw`` is the file's bytes (metadata and C2PA are read from them);
    ``image`` the decoded picture at its stored resolution, before any resize
    (the watermark is read from it; decoded from ``raw`` when omitted); ``fmt``
    the Pillow format name (sniffed from ``raw`` when omitted).
    ``trust_anchors_pem``: PEM root certificates a C2PA signer must chain to for
    ``trusted: true`` (for instance the C2PA trust list).
    """
    fmt = fmt or sniff_format(raw)
    parts: dict[str, dict[str, Any]] = {}
    readers = {
        "c2pa": lambda: read_c2pa(raw, fmt, trust_anchors_pem),
        "watermark": lambda: _watermark(raw, image),
        "metadata": lambda: read_metadata(raw, fmt),
    }
    for name, read in readers.items():
        try:
            parts[name] = read()
        except Exception as exc:  # each reader guards itself; this is the last line
            parts[name] = {"status": "error", "reason": reason(exc)}
    return {
        "format": fmt,
        **parts,
        "indicators": _indicators(parts["c2pa"], parts["watermark"], parts["metadata"]),
    }
