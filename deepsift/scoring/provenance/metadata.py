"""Generator metadata: what generation tools write into the file next to the pixels.

Read from the raw bytes, never from the decoded picture (decoding may drop it):

- PNG text chunks (``tEXt``, ``zTXt``, ``iTXt``): AUTOMATIC1111 / Forge / SD.Next
  ``parameters`` (prompt, negative prompt and a ``Steps: .., Sampler: ..`` line),
  ComfyUI ``prompt`` (the executed node graph, JSON) and ``workflow`` (the
  editor graph, JSON), InvokeAI ``invokeai_metadata``, NovelAI's ``Software`` /
  ``Source`` / ``Comment``, Fooocus ``fooocus_scheme``;
- EXIF: Software (0x0131), Make, Model, ImageDescription, Artist, and
  UserComment (0x9286, 8-byte character-code header; AUTOMATIC1111 stores its
  ``parameters`` there in JPEG and WebP);
- XMP (JPEG APP1, PNG ``iTXt XML:com.adobe.xmp``, WebP ``XMP`` chunk, TIFF):
  IPTC ``Iptc4xmpExt:DigitalSourceType`` (``trainedAlgorithmicMedia`` for
  generative AI), IPTC 2024 ``AISystemUsed``, and ``xmp:CreatorTool``.

All of it is trivially written, edited and stripped (most platforms strip it on
upload), so it is a claim by whoever saved the file, and its absence means
nothing.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from typing import Any

from PIL import Image

from deepsift.scoring.provenance._text import MAX_ITEMS, clip, decode_bytes, reason

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT_BYTES = 4 << 20  # decompressed text chunk size cap (ComfyUI graphs are ~100 KB)
_MAX_TEXT_CHUNKS = 64
_MAX_XMP_BYTES = 1 << 20

# Tool names written by image generators into Software / CreatorTool / claim
# generator fields. Matched case-insensitively as whole words.
GENERATOR_NAMES = (
    "Adobe Firefly",
    "Firefly",
    "Midjourney",
    "DALL·E",
    "DALL-E",
    "DALLE",
    "OpenAI",
    "ChatGPT",
    "Stable Diffusion",
    "StableDiffusion",
    "SDXL",
    "Stability AI",
    "DreamStudio",
    "NovelAI",
    "ComfyUI",
    "AUTOMATIC1111",
    "InvokeAI",
    "Fooocus",
    "Imagen",
    "Google AI",
    "Bing Image Creator",
    "Image Creator from Designer",
    "Leonardo.Ai",
    "Ideogram",
    "FLUX.1",
    "Black Forest Labs",
    "Runway",
    "Krea",
    "Playground AI",
    "Craiyon",
    "NightCafe",
    "Artbreeder",
)
_GENERATOR_RE = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(name) for name in GENERATOR_NAMES) + r")(?![\w])",
    re.IGNORECASE,
)

# Text-chunk keys whose mere presence names a generation tool.
_GENERATOR_KEYS = {
    "parameters": "AUTOMATIC1111-style parameters",
    "prompt": "ComfyUI prompt graph",
    "workflow": "ComfyUI workflow",
    "invokeai_metadata": "InvokeAI metadata",
    "invokeai_graph": "InvokeAI graph",
    "sd-metadata": "InvokeAI (legacy) metadata",
    "dream": "InvokeAI (legacy) dream",
    "fooocus_scheme": "Fooocus metadata",
}
# Keys whose values name the software, searched for generator names.
_TOOL_KEYS = ("software", "source", "generator", "creator tool", "creatortool")

_EXIF_IFD0 = {
    0x0131: "Software",
    0x010F: "Make",
    0x0110: "Model",
    0x010E: "ImageDescription",
    0x013B: "Artist",
}
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286

# A1111's settings-line regex (modules/infotext_utils.py, re_param_code), with the
# key length bounded: unbounded, it backtracks quadratically on a long line.
_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_MAX_SETTINGS_LINE = 8192


def generator_names(text: str) -> list[str]:
    """Known generator names mentioned in a tool field, as written there."""
    return sorted({match.group(1) for match in _GENERATOR_RE.finditer(text)})


# --------------------------------------------------------------------------- PNG


def _inflate(data: bytes) -> bytes:
    return zlib.decompressobj().decompress(data, _MAX_TEXT_BYTES)


def png_text_chunks(raw: bytes) -> dict[str, str]:
    """``{keyword: text}`` of a PNG's text chunks, anywhere in the file, first wins."""
    if not raw.startswith(_PNG_SIGNATURE):
        return {}
    texts: dict[str, str] = {}
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(raw) and len(texts) < _MAX_TEXT_CHUNKS:
        length = int.from_bytes(raw[pos : pos + 4], "big")
        kind = raw[pos + 4 : pos + 8]
        data = raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND" or len(data) < length:
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key_bytes, _, body = data.partition(b"\x00")
        key = decode_bytes(key_bytes, "latin-1")
        try:
            if kind == b"tEXt":
                text = decode_bytes(body, "latin-1")
            elif kind == b"zTXt":
                text = decode_bytes(_inflate(body[1:]), "latin-1")
            else:
                compressed, body = body[:1] == b"\x01", body[2:]
                _language, _, body = body.partition(b"\x00")
                _translated, _, body = body.partition(b"\x00")
                text = decode_bytes(_inflate(body) if compressed else body)
        except zlib.error:
            text = "<corrupt compressed text>"
        texts.setdefault(key, text)
    return texts


def parse_a1111(text: str) -> dict[str, Any]:
    """Roughly split AUTOMATIC1111 ``parameters`` into prompt, negative and settings."""
    lines = text.strip().split("\n")
    settings_line = ""
    last = lines[-1] if lines and len(lines[-1]) <= _MAX_SETTINGS_LINE else ""
    if len(_A1111_PARAM.findall(last)) >= 3:  # A1111's own test
        settings_line = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    settings = {}
    for key, value in _A1111_PARAM.findall(settings_line)[:30]:
        settings[clip(key.strip(), 40)] = clip(value.strip().strip('"'), 120)
    return {
        "prompt": clip("\n".join(prompt).strip()),
        "negative_prompt": clip("\n".join(negative).strip()),
        "settings": settings,
    }


def summarise_comfyui(prompt_json: str | None, workflow_json: str | None) -> dict[str, Any]:
    """Node types, model files and prompt texts from ComfyUI's two JSON chunks."""
    out: dict[str, Any] = {}
    if prompt_json is not None:
        try:
            graph = json.loads(prompt_json)
            nodes = (
                [n for n in graph.values() if isinstance(n, dict)]
                if isinstance(graph, dict)
                else []
            )
            out["nodes"] = len(nodes)
            out["class_types"] = sorted({clip(n.get("class_type", "?"), 80) for n in nodes})[
                :MAX_ITEMS
            ]
            models, texts = set(), []
            for node in nodes:
                inputs = node.get("inputs") or {}
                for key in ("ckpt_name", "unet_name", "model_name", "lora_name", "vae_name"):
                    if isinstance(inputs.get(key), str):
                        models.add(clip(inputs[key], 120))
                if "CLIPTextEncode" in str(node.get("class_type")):
                    texts += [clip(v) for v in inputs.values() if isinstance(v, str) and v.strip()]
            out["models"] = sorted(models)[:MAX_ITEMS]
            out["texts"] = texts[:4]
        except (ValueError, AttributeError, TypeError) as exc:
            out["prompt_error"] = reason(exc)
    if workflow_json is not None:
        try:
            workflow = json.loads(workflow_json)
            out["workflow_nodes"] = len(workflow.get("nodes") or [])
        except (ValueError, AttributeError, TypeError) as exc:
            out["workflow_error"] = reason(exc)
    return out


# -------------------------------------------------------------------------- EXIF


def decode_user_comment(value: bytes | str, big_endian: bool | None = None) -> str:
    """EXIF UserComment: an 8-byte character code (ASCII, UNICODE, JIS, undefined), then text."""
    if isinstance(value, str):
        return value
    code, body = value[:8], value[8:]
    if code == b"UNICODE\x00":
        if big_endian is None:  # ASCII-range text: the zero byte comes first in big-endian
            big_endian = body[0:1] == b"\x00" if body else True
        return decode_bytes(body, "utf-16-be" if big_endian else "utf-16-le").rstrip("\x00")
    if code == b"ASCII\x00\x00\x00":
        return decode_bytes(body, "ascii").rstrip("\x00 ")
    if code == b"JIS\x00\x00\x00\x00\x00":
        return decode_bytes(body, "shift_jis").rstrip("\x00 ")
    if code == b"\x00" * 8:
        return decode_bytes(body).rstrip("\x00 ")
    return decode_bytes(value).rstrip("\x00 ")


def read_exif(raw: bytes) -> dict[str, str]:
    """The generator-relevant EXIF tags of the file, as text."""
    with Image.open(io.BytesIO(raw)) as image:
        exif = image.getexif()
    out: dict[str, str] = {}
    for tag, name in _EXIF_IFD0.items():
        value = exif.get(tag)
        if value:
            out[name] = clip(decode_bytes(value) if isinstance(value, bytes) else value)
    comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if comment:
        big_endian = {">": True, "<": False}.get(getattr(exif, "endian", None) or "")
        out["UserComment"] = decode_user_comment(comment, big_endian)  # clipped by the caller
    return out


# --------------------------------------------------------------------------- XMP


def find_xmp(raw: bytes, png_texts: dict[str, str]) -> str | None:
    """The XMP packet of the file (PNG iTXt first, else the first ``<x:xmpmeta>``)."""
    packet = png_texts.get("XML:com.adobe.xmp")
    if packet:
        return packet[:_MAX_XMP_BYTES]
    start = raw.find(b"<x:xmpmeta")
    if start < 0:
        return None
    end = raw.find(b"</x:xmpmeta>", start)
    end = start + _MAX_XMP_BYTES if end < 0 else min(end + 12, start + _MAX_XMP_BYTES)
    return decode_bytes(raw[start:end])


def xmp_values(packet: str, prop: str) -> list[str]:
    """Values of an XMP property written as attribute, element, ``rdf:resource`` or ``rdf:li``."""
    name = re.escape(prop)
    pattern = re.compile(
        rf"{name}\s*=\s*\"([^\"]*)\"|{name}\s*=\s*'([^']*)'"
        rf"|<{name}\b[^>]*?rdf:resource\s*=\s*\"([^\"]*)\"[^>]*/?>"
        rf"|<{name}\b[^>/]*>(.*?)</{name}>",
        re.DOTALL,
    )
    values = []
    for match in pattern.finditer(packet):
        value = next((g for g in match.groups() if g is not None), "")
        value = " ".join(re.sub(r"<[^>]+>", " ", value).split())
        if value:
            values.append(clip(value, 200))
    return values[:MAX_ITEMS]


def read_xmp(packet: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, prop in (
        ("digital_source_type", "Iptc4xmpExt:DigitalSourceType"),
        ("ai_system_used", "Iptc4xmpExt:AISystemUsed"),
        ("creator_tool", "xmp:CreatorTool"),
    ):
        values = xmp_values(packet, prop)
        if values:
            out[key] = values if key == "digital_source_type" else values[0]
    return out


# ------------------------------------------------------------------------ all of it

_PARSED_KEYS = {"parameters", "prompt", "workflow", "XML:com.adobe.xmp"}


def _looks_like_a1111(text: str) -> bool:
    return "Steps:" in text and ("Sampler:" in text or "Seed:" in text)


def read_metadata(raw: bytes, fmt: str | None) -> dict[str, Any]:
    """Generator metadata of ``raw``; each part that fails adds to ``errors``."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    tool_fields: list[str] = []
    texts: dict[str, str] = {}
    try:
        texts = png_text_chunks(raw)
    except Exception as exc:
        errors["png_text"] = reason(exc)
    if texts:
        out["png_text_keys"] = [clip(key, 80) for key in list(texts)[:MAX_ITEMS]]
        lower = {key.lower(): key for key in texts}
        labels = [label for key, label in _GENERATOR_KEYS.items() if key in lower]
        if labels:
            out["generator_keys"] = labels
        other = {k: clip(v) for k, v in texts.items() if k not in _PARSED_KEYS}
        if other:
            out["png_text"] = dict(list(other.items())[:MAX_ITEMS])
        tool_fields += [texts[lower[key]] for key in _TOOL_KEYS if key in lower]
        params = texts.get("parameters")
        if params is not None and not params.lstrip().startswith("{"):
            out["a1111"] = {"source": "png parameters", **parse_a1111(params)}
        if "prompt" in texts or "workflow" in texts:
            out["comfyui"] = summarise_comfyui(texts.get("prompt"), texts.get("workflow"))
    try:
        exif = read_exif(raw)
    except Exception as exc:
        exif = {}
        if (fmt or "").upper() not in ("HEIF", "AVIF", "JXL"):
            errors["exif"] = reason(exc)
    if exif:
        comment = exif.get("UserComment", "")
        if "a1111" not in out and _looks_like_a1111(comment):
            out["a1111"] = {"source": "exif UserComment", **parse_a1111(comment)}
        if comment:
            exif["UserComment"] = clip(comment)
        out["exif"] = exif
        tool_fields += [exif[k] for k in ("Software", "Make", "Model") if k in exif]
    try:
        packet = find_xmp(raw, texts)
        xmp = read_xmp(packet) if packet else {}
    except Exception as exc:
        xmp = {}
        errors["xmp"] = reason(exc)
    if xmp:
        out["xmp"] = xmp
        tool_fields += [xmp[k] for k in ("creator_tool", "ai_system_used") if k in xmp]
    names = sorted({name for field in tool_fields for name in generator_names(field[:1000])})
    if names:
        out["generator_names"] = names
    status = "present" if out else ("error" if errors else "absent")
    return {"status": status, **out, **({"errors": errors} if errors else {})}
