"""``score.py --decode-device`` (deepsift.scoring.decode_device): the selection of every case,
the refusals (exit 2, nothing written), the per-item fallback to the CPU path, and the tensor
path itself run on the CPU device (torchvision's CPU ``decode_jpeg``, the same code the GPU
runs) against the PIL path. CI has no GPU: the CUDA branches are driven with
``torch.device("cuda")`` objects, as tests/test_score_accel.py does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.app import score_cli
from deepsift.core.errors import UserError
from deepsift.scoring import decode_device
from deepsift.scoring import runner as runner_module
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.decode import decode_image
from deepsift.scoring.decode_device import (
    cpu_pixel_needs,
    decode_batch,
    device_jpeg,
    member_support,
    pillow_resize,
    resolve_decode_device,
    tensor_preprocess,
    tensor_support,
)
from deepsift.scoring.models import Ensemble, Member
from deepsift.scoring.prepare import MemberSpec, PrepareContext, PrepareOptions
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from detectors.base import Detector
from detectors.factory import load_detector
from detectors.preprocessing import Preprocessing
from tests.scoring_fixtures import (
    TINY,
    encode,
    make_zoo,
    noise,
    one_thread,  # noqa: F401 - a fixture
    tiny_ensemble,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NO_EXTRAS = PrepareOptions(pdq=False, provenance=False)


def photo_jpeg(height: int, width: int, seed: int, **kwargs: Any) -> bytes:
    """A smooth, noisy picture (resizing filters differ most on real detail, not on flat areas)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.int16)
    pixels = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=kwargs.pop("quality", 90), **kwargs)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    sizes = [(256, 256), (300, 400), (231, 517), (40, 60), (700, 500)]
    out = [photo_jpeg(h, w, i) for i, (h, w) in enumerate(sizes)]
    out.append(photo_jpeg(200, 300, 9, subsampling=0, quality=75))  # 4:4:4
    grey = Image.fromarray(noise(3, 120, 90, channels=1))
    out.append(encode(grey, "JPEG", quality=90))
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_zoo(tmp_path_factory.mktemp("zoo") / "in")


@pytest.fixture(scope="module")
def tiny() -> Ensemble:
    return tiny_ensemble()


# -- the tensor transform against the PIL path --------------------------------------------
def test_cpu_decode_jpeg_is_pillow_bit_for_bit(jpegs: list[bytes]) -> None:
    decoded = decode_batch(jpegs, CPU)
    for raw, tensor in zip(jpegs, decoded, strict=True):
        assert tensor is not None and tensor.dtype == torch.uint8
        pixels = torch.from_numpy(np.array(decode_image(raw).image)).permute(2, 0, 1)
        assert torch.equal(tensor, pixels)


@pytest.mark.parametrize(
    ("fields", "grey_levels"),
    [
        ({"size": 224, "crop": "center"}, 0),  # cnnspot, univfd, timm_classifier: exact
        ({"size": 224, "crop": "none"}, 0),
        ({"size": 224, "pad": "to_size", "crop": "center"}, 0),
        ({"size": 224, "resize": "square", "resize_to": 256, "crop": "none"}, 0),  # npr
        ({"size": 224, "resize": "shorter", "resize_to": 256}, 0),  # c2p_clip (bilinear)
        ({"size": 224, "resize": "shorter", "interpolation": "bicubic"}, 0),  # clipbased
        ({"size": 256, "resize": "square", "resize_backend": "cv2", "crop": "none"}, 1),
        (
            {
                "size": 256,
                "resize": "square",
                "resize_backend": "cv2",
                "interpolation": "bicubic",
                "crop": "none",
            },
            1,
        ),  # DeepfakeBench's input
    ],
)
def test_tensor_preprocess_matches_pil_path(
    jpegs: list[bytes], fields: dict[str, Any], grey_levels: int
) -> None:
    """Within ``grey_levels`` of the PIL path on every value (0: equal, bit for bit), the same
    shape (crops of images smaller than the crop: zero-padded alike)."""
    pre = Preprocessing(**fields, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    std = torch.tensor(pre.std)[:, None, None]
    worst = 0.0
    for raw, image in zip(jpegs, decode_batch(jpegs, CPU), strict=True):
        reference = pre(decode_image(raw).image)
        tensor = tensor_preprocess(pre, image)
        assert tensor.shape == reference.shape and tensor.dtype == torch.float32
        if grey_levels == 0:
            assert torch.equal(tensor, reference)
        worst = max(worst, ((tensor - reference).abs() * std * 255).max().item())
    assert worst <= grey_levels + 1e-3, worst


def test_pillow_resize_is_pillow_bit_for_bit_in_both_pass_orders() -> None:
    """Noise (where rounding and clipping between the passes show most), up- and down-scaling,
    geometries where this Pillow runs the vertical pass first and where it does not; and
    F.interpolate(antialias=True), rounded, is not equal (why pillow_resize exists)."""
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    geometries = [(283, 190, 269, 207), (227, 291, 289, 74), (100, 127, 80, 96), (40, 30, 90, 70)]
    orders = set()
    worst_approx = 0.0
    for in_h, in_w, height, width in geometries:
        pixels = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)
        for name, mode in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            reference = np.asarray(Image.fromarray(pixels).resize((width, height), mode))
            out = pillow_resize(tensor, width, height, name)
            assert np.array_equal(out.permute(1, 2, 0).numpy().astype(np.uint8), reference)
            orders.add(decode_device._pillow_order(in_h, in_w, height, width, name, "cpu"))
        approx = F.interpolate(
            tensor.float()[None], size=(height, width), mode="bicubic", antialias=True
        )
        approx = approx[0].round().clamp(0, 255).permute(1, 2, 0).numpy()
        worst_approx = max(worst_approx, float(np.abs(approx - reference).max()))
    assert worst_approx > 1
    assert orders == {False, True}  # this Pillow: both pass orders occur, both reproduced


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize": "square", "interpolation": "nearest"}, "nearest has no tensor"),
        (
            {"resize": "square", "interpolation": "area", "resize_backend": "cv2"},
            "area has no tensor",
        ),
    ],
)
def test_configurations_without_a_tensor_implementation(
    fields: dict[str, Any], message: str
) -> None:
    pre = Preprocessing(**fields)
    assert message in (tensor_support(pre) or "")
    with pytest.raises(ValueError, match=message):
        tensor_preprocess(pre, torch.zeros(3, 8, 8, dtype=torch.uint8))


# -- which members and runs can take it ------------------------------------------------------
class _TwoInputs(Detector):
    """A detector whose transform adds a second input: never handed bare tensors."""

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        image = self.preprocessing(sample["image"])
        return {"image": image, "grey": image.mean(0, keepdim=True)}


class _OwnResize(Detector):
    """A detector whose transform resizes by itself first: its output is not its Preprocessing's."""

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return {"image": self.preprocessing(sample["image"].resize((16, 16)))}


class _Clip(Detector):
    input_kind = "clip"


def test_member_support(tiny: Ensemble) -> None:
    assert member_support(tiny.members[0].detector) is None
    assert "not its Preprocessing alone" in (member_support(_TwoInputs()) or "")
    assert "not its Preprocessing alone" in (member_support(_OwnResize()) or "")
    assert "not an image detector" in (member_support(_Clip()) or "")
    nearest = Detector(preprocessing={"resize": "square", "interpolation": "nearest"})
    assert "nearest" in (member_support(nearest) or "")
    # detectors that override transform with CNNDetection's test path qualify
    npr = load_detector("npr", preprocessing={"size": 32, "resize_to": 40})
    assert member_support(npr) is None


def test_cpu_pixel_needs() -> None:
    assert (
        cpu_pixel_needs(faces=False, pdq=False, provenance=False, stability=False, clips=False)
        == []
    )
    needs = cpu_pixel_needs(faces=True, pdq=True, provenance=True, stability=True, clips=True)
    assert [n.split()[0] for n in needs] == ["face", "PDQ", "provenance", "--stability", "clip"]


@pytest.mark.parametrize(
    ("requested", "device", "needs", "engine", "on_device", "reason"),
    [
        ("cpu", CUDA, [], "local", False, "--decode-device cpu"),
        ("auto", CPU, [], "local", False, "the model runs on cpu"),
        ("auto", CUDA, [], "local", True, "every member has a tensor transform"),
        ("cuda", CUDA, [], "local", True, "--decode-device cuda"),
        ("auto", CUDA, ["PDQ hashes CPU pixels (--no-pdq)"], "local", False, "PDQ hashes"),
        ("auto", CUDA, [], "ray", True, "every member has a tensor transform"),  # GPU actors
        ("auto", CPU, [], "ray", False, "the model actors get no GPU (--gpus-per-worker 0)"),
        ("auto", CUDA, ["PDQ hashes CPU pixels (--no-pdq)"], "ray", False, "PDQ hashes"),
        ("cpu", CUDA, ["PDQ hashes CPU pixels (--no-pdq)"], "ray", False, "--decode-device cpu"),
    ],
)
def test_selection(
    tiny: Ensemble,
    requested: str,
    device: torch.device,
    needs: list[str],
    engine: str,
    on_device: bool,
    reason: str,
) -> None:
    choice = resolve_decode_device(
        requested, device, [("tiny", tiny.members[0].detector)], needs, engine
    )
    assert choice.on_device is on_device and reason in choice.reason
    assert choice.to_dict()["decode_device"] == ("cuda" if on_device else "cpu")


def test_auto_keeps_a_member_without_tensor_transform_on_the_cpu(tiny: Ensemble) -> None:
    members = [("tiny", tiny.members[0].detector), ("two", _TwoInputs())]
    choice = resolve_decode_device("auto", CUDA, members, [])
    assert not choice.on_device and choice.reason.startswith("two: ")


@pytest.mark.parametrize(
    ("device", "needs", "members", "engine", "message"),
    [
        (CPU, [], "tiny", "local", "--decode-device cuda needs the model on CUDA (scoring on cpu)"),
        (
            CUDA,
            ["face members crop faces from CPU pixels (--faces off)"],
            "tiny",
            "local",
            "--decode-device cuda but face members crop faces",
        ),
        (CUDA, [], "two", "local", "--decode-device cuda but two: _TwoInputs's transform"),
        (CPU, [], "tiny", "ray", "--decode-device cuda needs GPUs for the Ray engine's model"),
        (
            CUDA,
            ["PDQ hashes CPU pixels (--no-pdq)"],
            "tiny",
            "ray",
            "--decode-device cuda but PDQ hashes",
        ),
    ],
)
def test_refusals(
    tiny: Ensemble,
    device: torch.device,
    needs: list[str],
    members: str,
    engine: str,
    message: str,
) -> None:
    detector = tiny.members[0].detector if members == "tiny" else _TwoInputs()
    with pytest.raises(UserError) as exc:
        resolve_decode_device("cuda", device, [(members, detector)], needs, engine)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="use auto, cpu or cuda"):
        resolve_decode_device("gpu", device, [], [])


# -- the worker's side -----------------------------------------------------------------------------
def test_which_files_the_device_decoder_takes(zoo: dict[str, Any]) -> None:
    from deepsift.scoring.decode import open_image

    root: Path = zoo["root"]

    def why(raw: bytes) -> str | None:
        return device_jpeg(raw, open_image(raw))

    assert why((root / "photo.jpg").read_bytes()) is None
    assert why((root / "lying.png").read_bytes()) is None  # a JPEG named .png: by content
    assert why(encode(Image.fromarray(noise(1, channels=1)), "JPEG")) is None  # grey
    assert why((root / "cmyk.jpg").read_bytes()) == "JPEG mode CMYK"
    assert why((root / "rotated.jpg").read_bytes()) == "EXIF orientation"
    assert why((root / "plain.png").read_bytes()) == "PNG is not JPEG"
    assert why((root / "photo.jpg").read_bytes() + b"trailer") == "no end-of-image marker"


def test_nothing_is_deferred_when_the_run_needs_cpu_pixels() -> None:
    """The worker's safety net: PDQ, provenance, stability or faces keep every item on the CPU
    path even if a caller asks to defer (the command line refuses such runs anyway)."""
    spec = [MemberSpec("m", lambda s: s)]
    assert PrepareContext(
        spec, PrepareOptions(pdq=False, provenance=False, defer_jpeg=True)
    ).defers_jpeg
    for options in (
        PrepareOptions(defer_jpeg=True),  # PDQ and provenance on (the defaults)
        PrepareOptions(pdq=False, provenance=False, stability=True, defer_jpeg=True),
    ):
        assert not PrepareContext(spec, options).defers_jpeg
    faces = [MemberSpec("f", lambda s: s, faces=True)]
    assert not PrepareContext(
        faces, PrepareOptions(pdq=False, provenance=False, defer_jpeg=True)
    ).defers_jpeg


# -- the tensor path end to end, on the CPU device ----------------------------------------------------
def run(
    ensemble: Ensemble, inputs: list[str], on_device: bool, workers: int = 0
) -> tuple[dict, dict]:
    options = RunOptions(
        inputs=inputs,
        batch_size=4,
        workers=workers,
        progress=False,
        prepare_options=NO_EXTRAS,
        decode_on_device=on_device,
    )
    sink = MemorySink()
    summary = Scorer(ensemble, DEFAULT_BANDS, options, sink).run()
    records = {(r["path"], r["member"], r["member_index"], r["frame"]): r for r in sink.records}
    return records, summary


def same_records(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    for key, left in a.items():
        right = b[key]
        assert left.keys() == right.keys()
        for name, value in left.items():
            if name == "score" and value is not None:
                assert abs(value - right[name]) <= tolerance, (key, value, right[name])
            elif name == "scores" and value:
                for member, score in value.items():
                    assert abs(score - right[name][member]) <= tolerance, key
            else:
                assert value == right[name], (key, name, value, right[name])


def test_tensor_path_gives_the_records_of_the_cpu_path(zoo: dict[str, Any], tiny: Ensemble) -> None:
    """The zoo (good, bad, archive, CMYK, rotated and mislabelled files) scored with JPEGs
    decoded in the model process: the same records, scores within 1e-6 (resize none: the same
    input tensors; the tolerance covers batch composition), JPEGs that take the CPU path
    (CMYK, EXIF-rotated, truncated) unchanged; one worker process ships the undecoded bytes."""
    inputs = [str(zoo["root"])]
    cpu, cpu_summary = run(tiny, inputs, on_device=False)
    tensor, summary = run(tiny, inputs, on_device=True, workers=1)
    same_records(cpu, tensor, 1e-6)
    assert cpu_summary["decode_device"]["tensor_path"] is False
    counts = summary["decode_device"]
    assert counts["tensor_path"] is True and counts["decode_device"] == "cpu"  # the CPU device
    # photo.jpg, lying.png (a JPEG by content) and the zip's dir/b.jpg
    assert counts["jpegs_on_device"] == 3 and counts["device_decode_fallbacks"] == 0
    errors = {Path(k[0]).name: r["error"] for k, r in tensor.items() if r["error"]}
    assert "truncated or corrupt" in errors["truncated.jpg"]


def test_tensor_path_with_a_pillow_resize_gives_the_same_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """npr's protocol (square bilinear resize, Pillow's): equal inputs, so the same scores;
    and a geometry neither pass order reproduces (pretended here) takes the CPU path."""
    for i, (h, w) in enumerate([(120, 90), (64, 64), (50, 130)]):
        (tmp_path / f"{i}.jpg").write_bytes(photo_jpeg(h, w, i))
    torch.manual_seed(0)
    detector = load_detector(
        "timm_classifier",
        backbone="resnet18",
        preprocessing={"size": 48, "resize": "square", "crop": "none"},
    ).eval()
    ensemble = Ensemble([Member("sq", detector, False, {"detector": "sq"})])
    cpu, _ = run(ensemble, [str(tmp_path)], on_device=False)
    tensor, summary = run(ensemble, [str(tmp_path)], on_device=True)
    assert summary["decode_device"]["jpegs_on_device"] == 3
    same_records(cpu, tensor, 1e-6)
    monkeypatch.setattr(decode_device, "_pillow_order", lambda *args: None)
    tensor, summary = run(ensemble, [str(tmp_path)], on_device=True)
    assert summary["decode_device"]["device_decode_fallbacks"] == 3
    same_records(cpu, tensor, 1e-6)


def test_a_jpeg_the_device_rejects_falls_back_to_the_cpu_path(
    tmp_path: Path, tiny: Ensemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder error (None) or a tensor of another size than the header: that item is
    prepared again on the CPU path, the same record as --decode-device cpu; never an error."""
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(photo_jpeg(40, 48, i))
    cpu, _ = run(tiny, [str(tmp_path)], on_device=False)
    real = runner_module.decode_batch

    def flaky(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        out = real(datas, device)
        out[0] = None  # the decoder refused it
        if len(out) > 1:
            out[1] = torch.zeros(3, 8, 8, dtype=torch.uint8)  # not the header's size
        return out

    monkeypatch.setattr(runner_module, "decode_batch", flaky)
    tensor, summary = run(tiny, [str(tmp_path)], on_device=True)
    same_records(cpu, tensor, 1e-6)
    assert summary["decode_device"]["device_decode_fallbacks"] == 2
    assert summary["decode_device"]["jpegs_on_device"] == 2


# -- the command line -------------------------------------------------------------------------------------
QUICK = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.jpg").write_bytes(photo_jpeg(40, 40, i))
    return folder


def test_cli_auto_on_a_cpu_machine_decodes_on_the_cpu_and_says_why(
    tmp_path: Path, folder: Path
) -> None:
    out = tmp_path / "r.jsonl"
    summary = score_cli.main([str(folder), "--out", str(out), *TINY, *QUICK, "--device", "cpu"])
    assert summary["decode_device"]["decode_device"] == "cpu"
    assert summary["decode_device"]["reason"] == "the model runs on cpu"
    written = json.loads(score_cli.summary_path(out).read_text())
    assert written["decode_device"]["requested"] == "auto"


def refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exc:
        score_cli.main(argv)
    assert exc.value.code == 2
    assert not out.exists() and not score_cli.summary_path(out).exists()
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_cuda_without_cuda_is_refused(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.jsonl"
    argv = [
        str(folder),
        "--out",
        str(out),
        *TINY,
        *QUICK,
        "--device",
        "cpu",
        "--decode-device",
        "cuda",
    ]
    assert refused(argv, out, capsys).startswith(
        "error: --decode-device cuda needs the model on CUDA (scoring on cpu)"
    )


def test_cli_cuda_with_options_that_need_cpu_pixels_is_refused(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a (pretended) CUDA model: PDQ and provenance are on by default, so an explicit cuda
    names them and their flags; the model is never moved and --out never opened."""
    monkeypatch.setattr(score_cli, "resolve", lambda args: (CUDA, None))
    real = score_cli.ensemble_from_args
    monkeypatch.setattr(score_cli, "ensemble_from_args", lambda args, device: real(args, CPU))
    out = tmp_path / "r.jsonl"
    argv = [
        str(folder),
        "--out",
        str(out),
        *TINY,
        "--workers",
        "0",
        "--quiet",
        "--decode-device",
        "cuda",
    ]
    line = refused(argv, out, capsys)
    assert line.startswith("error: --decode-device cuda but PDQ hashes CPU pixels (--no-pdq); ")
    assert "(--no-provenance)" in line
    line = refused([*argv, "--no-pdq", "--no-provenance", "--stability"], out, capsys)
    assert "--stability launders CPU copies" in line
    nearest = [
        "--set",
        "preprocessing.resize=square",
        "--set",
        "preprocessing.interpolation=nearest",
    ]
    line = refused([*argv, "--no-pdq", "--no-provenance", *nearest], out, capsys)
    assert line.startswith("error: --decode-device cuda but timm_classifier: resize interpolation")


def test_cli_ray_engine_refuses_cuda_without_gpu_actors_before_ray_starts(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepsift.scoring import ray_engine

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_engine, "start_ray", no_ray)
    out = tmp_path / "r.jsonl"
    argv = [
        str(folder),
        "--out",
        str(out),
        *TINY,
        *QUICK,
        "--engine",
        "ray",
        "--decode-device",
        "cuda",
    ]
    assert refused(argv, out, capsys).startswith(
        "error: --decode-device cuda needs GPUs for the Ray engine's model actors "
        "(--gpus-per-worker 0); pass --gpus-per-worker 1"
    )
    # GPU actors asked for, but PDQ and provenance (on by default) need CPU pixels
    argv = [str(folder), "--out", str(out), *TINY, "--quiet", "--engine", "ray"]
    line = refused([*argv, "--gpus-per-worker", "1", "--decode-device", "cuda"], out, capsys)
    assert line.startswith("error: --decode-device cuda but PDQ hashes CPU pixels")


def test_scorer_refuses_to_hand_tensors_to_a_member_without_a_tensor_transform() -> None:
    """The Python API's guard (the command line refuses first, in one line)."""
    ensemble = Ensemble([Member("two", _TwoInputs(), False, {})])
    with pytest.raises(ValueError, match="decode_on_device: two: "):
        Scorer(ensemble, DEFAULT_BANDS, RunOptions(inputs=[], decode_on_device=True), MemorySink())


def test_a_batch_of_one_size_is_transformed_as_each_picture_alone() -> None:
    """The model process stacks the JPEGs of one size (one set of kernels per batch); the
    stacked result is each picture's own, for Pillow's resize, cv2's and none."""
    images = torch.stack(
        [torch.from_numpy(noise(i, 50, 70)).permute(2, 0, 1).contiguous() for i in range(3)]
    )
    for fields in (
        {"size": 32, "resize": "square", "interpolation": "bicubic", "crop": "none"},
        {"size": 32, "resize": "square", "resize_backend": "cv2", "crop": "none"},
        {"size": 48, "crop": "center"},
    ):
        pre = Preprocessing(**fields)
        batch = tensor_preprocess(pre, images)
        assert batch.shape[0] == 3
        for i in range(3):
            assert torch.equal(batch[i], tensor_preprocess(pre, images[i])), fields
