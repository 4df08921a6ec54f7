"""Offline provenance signals: C2PA, the Stable Diffusion watermark, generator metadata.

Every case is built here: a PNG with an AUTOMATIC1111 chunk, ComfyUI graphs,
EXIF and XMP written with Pillow, pictures marked with invisible-watermark's own
encoder, and C2PA manifests signed with a certificate made in the test.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import io
import json
import pathlib
import struct
import zlib
from importlib import metadata as importlib_metadata

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from deepsift.scoring.provenance import read_provenance
from deepsift.scoring.provenance.metadata import decode_user_comment, parse_a1111, png_text_chunks
from deepsift.scoring.provenance.watermark import (
    MARKS,
    SDXL_MESSAGE,
    block_votes,
    decode_bits,
    detect_sd_watermark,
    sdxl_level,
)

A1111 = (
    "a photo of an astronaut riding a horse, best quality\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.6.0'
)
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def photo(width: int = 384, height: int = 320, seed: int = 0) -> np.ndarray:
    """A deterministic, textured RGB picture (smooth structure plus sensor-like noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 120 + 70 * np.sin(xx / 37.0 + seed) * np.cos(yy / 23.0)
    green = 110 + 60 * np.cos((xx + yy) / 51.0 + seed)
    blue = 100 + 50 * np.sin(yy / 19.0 - xx / 71.0)
    noise = np.random.RandomState(seed).normal(0, 12, (height, width, 3))
    return np.clip(np.stack([red, green, blue], -1) + noise, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def assert_json_safe(record: dict) -> None:
    text = json.dumps(record, allow_nan=False, ensure_ascii=False)
    assert json.loads(text) == record


# ----------------------------------------------------------------- metadata


def test_automatic1111_png_chunk_is_parsed_and_flagged():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    raw = encode(Image.fromarray(photo(64, 64)), "PNG", pnginfo=info)
    record = read_provenance(raw)
    assert_json_safe(record)
    a1111 = record["metadata"]["a1111"]
    assert a1111["source"] == "png parameters"
    assert a1111["prompt"] == "a photo of an astronaut riding a horse, best quality"
    assert a1111["negative_prompt"] == "blurry, lowres"
    settings = a1111["settings"]
    assert settings["Steps"] == "20"
    assert settings["Sampler"] == "DPM++ 2M Karras"
    assert settings["Seed"] == "1234"
    assert settings["Model hash"] == "6ce0161689"
    assert settings["Lora hashes"] == "a: 1, b: 2"  # a quoted value keeps its commas
    assert record["indicators"] == ["png text: AUTOMATIC1111-style parameters"]
    assert record["c2pa"] == {"status": "absent"}
    assert record["watermark"]["status"] == "not_checked"  # 64 x 64 is below the decoder's minimum


def test_compressed_international_and_late_text_chunks_are_read():
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI", zip=True)  # zTXt
    info.add_itxt("Description", "ein Foto, 猫", zip=True)  # compressed iTXt
    raw = encode(Image.new("RGB", (16, 16)), "PNG", pnginfo=info)
    # A tEXt chunk after IDAT, where Pillow only looks after decoding the pixels.
    late = b"parameters\x00" + A1111.encode("latin-1")
    chunk = struct.pack(">I", len(late)) + b"tEXt" + late
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + late))
    iend = raw.rindex(b"IEND") - 4
    raw = raw[:iend] + chunk + raw[iend:]

    texts = png_text_chunks(raw)
    assert texts["Software"] == "NovelAI"
    assert texts["Description"] == "ein Foto, 猫"
    assert texts["parameters"] == A1111
    meta = read_provenance(raw)["metadata"]
    assert meta["generator_names"] == ["NovelAI"]
    assert meta["a1111"]["settings"]["Steps"] == "20"


def test_comfyui_prompt_and_workflow_are_summarised():
    prompt = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a red fox in snow", "clip": ["4", 1]},
        },
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["4", 0]}},
    }
    workflow = {"nodes": [{"id": 3, "type": "KSampler"}, {"id": 4}, {"id": 6}], "links": []}
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(workflow))
    record = read_provenance(encode(Image.new("RGB", (32, 32)), "PNG", pnginfo=info))
    comfy = record["metadata"]["comfyui"]
    assert comfy["nodes"] == 3
    assert comfy["class_types"] == ["CLIPTextEncode", "CheckpointLoaderSimple", "KSampler"]
    assert comfy["models"] == ["sd_xl_base_1.0.safetensors"]
    assert comfy["texts"] == ["a red fox in snow"]
    assert comfy["workflow_nodes"] == 3
    assert "png text: ComfyUI prompt graph" in record["indicators"]
    assert "png text: ComfyUI workflow" in record["indicators"]


def test_broken_comfyui_json_is_reported_not_raised():
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "{not json")
    comfy = read_provenance(encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=info))["metadata"][
        "comfyui"
    ]
    assert comfy["prompt_error"].startswith("JSONDecodeError")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_software_and_unicode_user_comment(fmt):
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"  # Software
    exif[0x010F] = "Canon"  # Make
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    record = read_provenance(encode(Image.fromarray(photo(48, 40)), fmt, exif=exif))
    meta = record["metadata"]
    assert meta["exif"]["Software"] == "Midjourney v6"
    assert meta["exif"]["Make"] == "Canon"
    assert meta["exif"]["UserComment"].startswith("a photo of an astronaut")
    assert meta["a1111"]["source"] == "exif UserComment"
    assert meta["a1111"]["settings"]["Seed"] == "1234"
    assert meta["generator_names"] == ["Midjourney"]
    assert "exif UserComment: AUTOMATIC1111-style parameters" in record["indicators"]
    assert "metadata tool field: Midjourney" in record["indicators"]


def test_user_comment_character_codes():
    assert decode_user_comment(b"ASCII\x00\x00\x00hello\x00") == "hello"
    assert (
        decode_user_comment(b"UNICODE\x00" + "héllo".encode("utf-16-le"), big_endian=False)
        == "héllo"
    )
    assert decode_user_comment(b"UNICODE\x00" + "hello".encode("utf-16-be")) == "hello"
    assert decode_user_comment(b"\x00" * 8 + "ok ✓".encode()) == "ok ✓"
    assert decode_user_comment(b"no header at all") == "no header at all"


def xmp_packet(body: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {body}</rdf:Description></rdf:RDF></x:xmpmeta>'
    ).encode()


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("JPEG", f'Iptc4xmpExt:DigitalSourceType="{TRAINED}" xmp:CreatorTool="Adobe Firefly">'),
        ("WEBP", f"><Iptc4xmpExt:DigitalSourceType>{TRAINED}</Iptc4xmpExt:DigitalSourceType>"),
        ("PNG", f'><Iptc4xmpExt:DigitalSourceType rdf:resource="{TRAINED}"/>'),
    ],
)
def test_xmp_digital_source_type(fmt, body):
    packet = xmp_packet(body)
    image = Image.new("RGB", (24, 24), (90, 90, 90))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode(), zip=True)
        raw = encode(image, fmt, pnginfo=info)
    else:
        raw = encode(image, fmt, xmp=packet)
    record = read_provenance(raw)
    assert record["metadata"]["xmp"]["digital_source_type"] == [TRAINED]
    assert "xmp: digitalSourceType trainedAlgorithmicMedia" in record["indicators"]
    if fmt == "JPEG":
        assert record["metadata"]["xmp"]["creator_tool"] == "Adobe Firefly"
        assert "metadata tool field: Adobe Firefly" in record["indicators"]


def test_camera_photo_has_no_indicators():
    exif = Image.Exif()
    exif[0x0131] = "Adobe Photoshop 25.0"
    exif[0x010F] = "NIKON CORPORATION"
    body = 'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture">'
    raw = encode(Image.fromarray(photo()), "JPEG", quality=92, exif=exif, xmp=xmp_packet(body))
    record = read_provenance(raw)
    assert_json_safe(record)
    assert record["metadata"]["status"] == "present"
    assert record["watermark"]["status"] == "not_detected"
    assert record["indicators"] == []


def test_long_values_are_truncated():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * 10_000 + "\nSteps: 1, Sampler: a, Seed: 2")
    info.add_text("Comment", "y" * 10_000)
    meta = read_provenance(encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=info))["metadata"]
    assert len(meta["a1111"]["prompt"]) == 300
    assert len(meta["png_text"]["Comment"]) == 300
    assert meta["png_text"]["Comment"].endswith("…")


def test_a1111_without_settings_line_keeps_the_text_as_prompt():
    parsed = parse_a1111("just a prompt\nover two lines")
    assert parsed == {
        "prompt": "just a prompt\nover two lines",
        "negative_prompt": "",
        "settings": {},
    }


# ---------------------------------------------------------------- bad input


@functools.cache
def _bad_inputs() -> dict[str, bytes]:
    png = encode(Image.fromarray(photo(300, 260)), "PNG")
    jpeg = encode(Image.fromarray(photo(300, 260)), "JPEG")
    # 64 MB of text in one line: decompression is capped, and the settings regex
    # must not backtrack quadratically on it.
    bomb_text = b"parameters\x00" + zlib.compress(b"A" * (64 << 20))
    bomb = (
        struct.pack(">I", len(bomb_text) + 1) + b"zTXt" + bomb_text[:11] + b"\x00" + bomb_text[11:]
    )
    return {
        "empty": b"",
        "random": np.random.RandomState(0).bytes(5000),
        "truncated_png": png[: len(png) // 2],
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "png_signature_only": png[:8],
        "corrupt_chunk_length": png[:8] + b"\xff\xff\xff\xf0IHDR" + png[16:200],
        "text_bomb": png[:33] + bomb + b"\x00\x00\x00\x00" + png[33:],
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_bad_data_never_raises(name):
    raw = _bad_inputs()[name]
    record = read_provenance(raw)
    assert_json_safe(record)
    assert set(record) == {"format", "c2pa", "watermark", "metadata", "indicators"}
    for part in ("c2pa", "watermark", "metadata"):
        status = record[part]["status"]
        assert status in {"absent", "present", "not_detected", "not_checked", "error"}, (
            part,
            status,
        )
        if status in {"error", "not_checked"}:
            assert record[part].get("reason") or record[part].get("errors")
    if name == "text_bomb":  # decompression is capped, not refused
        assert len(record["metadata"]["png_text_keys"]) == 1
    if name in {"empty", "random"}:
        assert record["watermark"]["status"] == "not_checked"


# --------------------------------------------------------------- watermark


def embed_max_dct():
    """invisible-watermark's ``EmbedMaxDct``: what ``WatermarkEncoder.encode(img, "dwtDct")``
    and ``WatermarkDecoder.decode(img, "dwtDct")`` run.

    Loaded from its file, as Stability's ``scripts/demo/detect.py`` does, because
    ``import imwatermark`` imports torch (for the RivaGAN method) and costs seconds.
    """
    spec = importlib.util.find_spec("imwatermark")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("invisible-watermark is not installed (pip install invisible-watermark)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "maxDct.py"
    module_spec = importlib.util.spec_from_file_location("_imwatermark_maxdct", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.EmbedMaxDct


def message_bits(name: str) -> list[int]:
    """The bits each script writes (``WatermarkEncoder.set_watermark`` "bytes" / "bits")."""
    if name == "sdxl":
        return [int(b) for b in bin(SDXL_MESSAGE)[2:]]
    text = {"sd1": b"StableDiffusionV1", "sd2": b"SDV2"}[name]
    return [int(b) for b in np.unpackbits(np.frombuffer(text, dtype=np.uint8))]


def mark(rgb: np.ndarray, name: str, channel_order: str = "bgr") -> np.ndarray:
    """Write a Stable Diffusion mark the way the reference scripts do."""
    bits = message_bits(name)
    encoder = embed_max_dct()(bits, wmLen=len(bits))
    if channel_order == "bgr":  # CompVis / Stability scripts: RGB -> BGR -> encode -> RGB
        return encoder.encode(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1]
    # diffusers' StableDiffusionXLWatermarker hands over the RGB array as if BGR.
    return encoder.encode(rgb.copy())


@pytest.fixture(scope="module")
def marked() -> dict[str, Image.Image]:
    rgb = photo(512, 512)  # Stable Diffusion 1's native size
    out = {}
    for name, order in (("sd1", "bgr"), ("sd2", "bgr"), ("sdxl", "bgr"), ("sdxl", "rgb")):
        png = encode(Image.fromarray(np.ascontiguousarray(mark(rgb, name, order))), "PNG")
        out[f"{name}-{order}"] = Image.open(io.BytesIO(png)).convert("RGB")
    return out


@pytest.mark.parametrize("key", ["sd1-bgr", "sd2-bgr", "sdxl-bgr", "sdxl-rgb"])
def test_watermark_written_by_invisible_watermark_is_detected(marked, key):
    name, order = key.split("-")
    result = detect_sd_watermark(marked[key])
    assert result["status"] == "detected"
    assert result["match"] == name
    entry = next(c for c in result["candidates"] if c["name"] == name)
    assert entry["channel_order"] == order
    assert entry["agreement"] >= 0.9
    others = [c for c in result["candidates"] if c["name"] != name]
    assert not any(c["detected"] for c in others)
    if name == "sdxl":
        assert entry["level"] == "very_likely"


def test_watermark_record_through_read_provenance(marked):
    raw = encode(marked["sdxl-bgr"], "PNG")
    record = read_provenance(raw)  # image decoded from raw
    assert record["watermark"]["match"] == "sdxl"
    assert record["indicators"] == ["invisible watermark: sdxl"]
    assert read_provenance(raw, marked["sdxl-bgr"], "PNG")["watermark"] == record["watermark"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unmarked_pictures_are_not_detected(seed):
    for image in (Image.fromarray(photo(seed=seed)), Image.new("RGB", (320, 320), (128, 64, 32))):
        result = detect_sd_watermark(image)
        assert result["status"] == "not_detected"
        assert result["match"] is None
        assert "absence proves nothing" in result["note"]
        assert all(c["agreement"] < 0.8 for c in result["candidates"])


def test_decoder_matches_imwatermark_bit_for_bit(marked):
    embed = embed_max_dct()
    # 600 rows = 75 block rows: more than one strip of the vectorised decoder.
    arrays = [np.asarray(marked["sd1-bgr"])[..., ::-1], photo(300, 600, seed=4)]
    for array in arrays:
        array = np.ascontiguousarray(array)
        votes = block_votes(array)
        for m in MARKS:
            reference = embed(watermarks=[], wmLen=len(m.bits)).decode(array)
            assert np.array_equal(
                decode_bits(votes, len(m.bits)), np.asarray(reference, dtype=bool)
            )


def test_jpeg_420_destroys_the_mark_and_444_keeps_it(marked):
    """Why absence proves nothing: the usual JPEG chroma subsampling removes the mark."""
    image = marked["sd1-bgr"]
    subsampled = Image.open(io.BytesIO(encode(image, "JPEG", quality=95, subsampling="4:2:0")))
    full_chroma = Image.open(io.BytesIO(encode(image, "JPEG", quality=95, subsampling="4:4:4")))
    assert detect_sd_watermark(subsampled)["status"] == "not_detected"
    assert detect_sd_watermark(full_chroma)["match"] == "sd1"
    resized = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BICUBIC)
    assert detect_sd_watermark(resized)["status"] == "not_detected"


def test_small_images_are_not_checked():
    result = detect_sd_watermark(Image.new("RGB", (255, 256)))
    assert result["status"] == "not_checked"
    assert "256x256" in result["reason"]
    assert detect_sd_watermark(Image.new("RGB", (512, 128)))["status"] != "not_checked"


def test_sdxl_levels_follow_stability_detect_script():
    assert [sdxl_level(n) for n in (27, 28, 33, 34, 35, 36, 48)] == [
        "none",
        "partial",
        "partial",
        "likely",
        "likely",
        "very_likely",
        "very_likely",
    ]


# --------------------------------------------------------------------- C2PA


def _certificates():
    """A self-made CA and a signing certificate with the profile C2PA requires."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deepsift tests"),
            ]
        )

    def usage(signing: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=signing,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=not signing,
            crl_sign=not signing,
            encipher_only=False,
            decipher_only=False,
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("deepsift test root"))
        .issuer_name(name("deepsift test root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(signing=False), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("deepsift test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(signing=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = (leaf.public_bytes(pem) + ca.public_bytes(pem)).decode()

    def sign(data: bytes) -> bytes:
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    return sign, chain, ca.public_bytes(pem).decode()


@pytest.fixture(scope="module")
def signed() -> dict[str, object]:
    c2pa = pytest.importorskip(
        "c2pa", reason="c2pa-python is not installed (pip install c2pa-python)"
    )
    sign, chain, root_pem = _certificates()
    manifest = {
        "claim_generator_info": [{"name": "deepsift-test-generator", "version": "1.0"}],
        "title": "generated.jpg",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED,
                            "softwareAgent": {"name": "TestDiffusion", "version": "2"},
                        }
                    ]
                },
            }
        ],
    }
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"ocsp_fetch": False}}
    out: dict[str, object] = {"root_pem": root_pem}
    picture = Image.fromarray(photo(320, 256, seed=7))
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        dest = io.BytesIO()
        with (
            c2pa.Context.from_dict(settings) as context,
            c2pa.Signer.from_callback(sign, c2pa.C2paSigningAlg.ES256, chain, None) as signer,
            c2pa.Builder(manifest, context) as builder,
        ):
            builder.sign(signer, mime, io.BytesIO(encode(picture, fmt)), dest)
        out[fmt] = dest.getvalue()
    return out


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_c2pa_manifest_signed_with_self_made_certificate(signed, fmt):
    record = read_provenance(signed[fmt])
    assert_json_safe(record)
    c2pa = record["c2pa"]
    assert c2pa["status"] == "present"
    assert c2pa["valid"] is True  # signature and content hash check out
    assert c2pa["trusted"] is False  # but nobody vouches for the self-made root
    assert "signingCredential.untrusted" in c2pa["validation_codes"]
    assert c2pa["claim_generator"] == "deepsift-test-generator 1.0"
    assert c2pa["actions"] == [
        {"action": "c2pa.created", "digitalSourceType": TRAINED, "softwareAgent": "TestDiffusion 2"}
    ]
    assert c2pa["digital_source_types"] == ["trainedAlgorithmicMedia"]
    assert c2pa["generative_ai"] is True
    assert c2pa["signer"] == "deepsift test signer"
    assert c2pa["issuer"] == "deepsift tests"
    assert c2pa["signing_time"] is None  # signed without a time-stamp authority (offline)
    assert record["indicators"] == [
        "c2pa (valid, untrusted): digitalSourceType trainedAlgorithmicMedia"
    ]


def test_c2pa_trusted_when_the_root_is_a_configured_anchor(signed):
    c2pa = read_provenance(signed["JPEG"], trust_anchors_pem=signed["root_pem"])["c2pa"]
    assert c2pa["trusted"] is True
    assert c2pa["validation_state"] == "Trusted"
    assert "signingCredential.untrusted" not in c2pa["validation_codes"]


def test_c2pa_tampered_pixels_are_invalid(signed):
    raw = bytearray(signed["JPEG"])
    raw[-200] ^= 0xFF  # inside the entropy-coded image data, after the manifest
    record = read_provenance(bytes(raw))
    c2pa = record["c2pa"]
    assert c2pa["status"] == "present"
    assert c2pa["valid"] is False
    assert any("mismatch" in code for code in c2pa["validation_codes"])
    assert record["indicators"] == [
        "c2pa (invalid, untrusted): digitalSourceType trainedAlgorithmicMedia"
    ]


def test_c2pa_absent_from_a_plain_file():
    pytest.importorskip("c2pa", reason="c2pa-python is not installed (pip install c2pa-python)")
    assert read_provenance(encode(Image.new("RGB", (8, 8)), "JPEG"))["c2pa"] == {"status": "absent"}


# ---------------------------------------------------------------- packaging


def test_one_opencv_4_distribution():
    """invisible-watermark pulls in opencv-python, which silently overwrites another OpenCV build."""
    builds = ("opencv-python", "opencv-python-headless", "opencv-contrib-python")
    installed = []
    for dist in (*builds, "opencv-contrib-python-headless"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            installed.append((dist, importlib_metadata.version(dist)))
    if not installed:
        pytest.skip("OpenCV is not installed")
    assert [name for name, _ in installed] == ["opencv-python"], installed
    assert installed[0][1].split(".")[0] == "4", installed
    import cv2

    assert sorted(pathlib.Path(cv2.data.haarcascades).glob("haarcascade_frontalface_*.xml"))
