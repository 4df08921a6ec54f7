"""Make the CNNDetection-family references (CNNSpot, NPR, FreqNet) from the authors' code.

Usage (each checkout lives outside this project and is never committed)::

    python -m tests.official.make_cnndetection cnnspot --repo /path/to/CNNDetection
    python -m tests.official.make_cnndetection npr --repo /path/to/NPR-DeepfakeDetection
    python -m tests.official.make_cnndetection freqnet --repo /path/to/FreqNet-DeepfakeDetection

For every format the script imports the authors' modules from ``--repo`` at run time,
builds their model, loads :func:`~tests.official.weights.seeded_state_dict` of its
own keys, saves the file as their trainer saves it
(:func:`~tests.official.weights.write_official_file`), reloads it as their test code
does, writes the pictures of :func:`~tests.official.images.reference_images` as PNG
files (lossless) into an ``ImageFolder`` tree, reads them back through their own
``data.create_dataloader`` (``datasets.ImageFolder`` + PIL ``convert('RGB')`` + their
``transforms.Compose``) with their ``TestOptions`` and the test script's flags, runs
their forward pass and ``.sigmoid()`` (``validate.py``), and writes
``tests/official/<format>.json``.

* ``cnnspot`` -- github.com/PeterWang512/CNNDetection at
  ea0b5622365e3a9cd31d1b54b6b5971131a839ab: ``networks/resnet.py`` (``resnet50(
  num_classes=1)``), ``eval.py`` (``torch.load(path)['model']``; ``opt.no_resize =
  True``, no ``--no_crop``: the paper's protocol, a 224 px ``CenterCrop``, which
  zero-pads smaller images), ``options/*``, ``data/__init__.py``,
  ``data/datasets.py`` (``binary_dataset``: ``data_augment`` with ``blur_prob =
  jpg_prob = 0``, ``CenterCrop(224)``, ``ToTensor``, ImageNet ``Normalize``),
  ``networks/base_model.py`` (``save_networks``: ``{'model', 'optimizer',
  'total_steps'}``). Two references, ``blur_jpg_prob0.5.pth`` and
  ``blur_jpg_prob0.1.pth`` (the same architecture and container; two seeds).
* ``npr`` -- github.com/chuangchuangtan/NPR-DeepfakeDetection at
  73cde1ced21291bfb504a2add2b53fbe99c4f433: ``networks/resnet.py``
  (``resnet50(num_classes=1)``, the NPR residual), ``test.py`` (``load_state_dict(
  torch.load(path), strict=True)``; ForenSynths flags ``no_resize=False``,
  ``no_crop=True``), ``data/*`` (``Resize((256, 256))`` on the PIL image,
  ``ToTensor``, ImageNet ``Normalize``), ``networks/base_model.py``
  (``torch.save(model.state_dict())``).
* ``freqnet`` -- the authors' commit 2c6bd020cda1c0001e7a7d30ebd2dd5c55b5a8b6 of
  github.com/chuangchuangtan/FreqNet-DeepfakeDetection (the stored copy of that
  repository holds only its first commit; the authors' commits were read from the
  fork github.com/TheAvailer/FreqNet-DeepfakeDetection, whose history contains
  them unchanged; github.com/Njoom/FreqNet-DeepfakeDetection holds the same commit
  hash as its last one by the authors): ``networks/freqnet.py``, ``test.py`` (as NPR's:
  ``load_state_dict(torch.load(path), strict=True)``, ForenSynths flags),
  ``data/*`` (as NPR's), ``networks/base_model.py`` (a plain state dict). Their
  ``FreqNet.__init__`` creates its raw kernels with ``.cuda()``; on a machine
  without CUDA this script makes ``Tensor.cuda`` return the tensor unchanged while
  the model is built (the kernels are replaced by the seeded ones anyway).

Each reference also records ``alternatives``: the outputs of the same code under the
other test-time flags its README documents (CNNDetection ``--no_crop``; NPR and FreqNet
the GANGen-Detection ``no_resize``), with the deepsift preprocessing fields that
express them; ``tests/test_cnnspot.py``, ``test_npr.py`` and ``test_freqnet.py``
compare those.

The forward passes run on the CPU in float32 (``--dtype float64`` casts the model and
the input tensor after their transform, for formats whose random network is
ill-conditioned).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tests.official.images import SIZES, reference_images
from tests.official.weights import HERE, key_spec, seeded_state_dict, write_official_file

FORMATS: dict[str, dict[str, Any]] = {
    "cnndetection_blur_jpg_prob0.5": {
        "family": "cnnspot",
        "detector": "cnnspot",
        "filename": "blur_jpg_prob0.5.pth",
        "seed": 0,
        "repository": "github.com/PeterWang512/CNNDetection",
        "commit": "ea0b5622365e3a9cd31d1b54b6b5971131a839ab",
    },
    "cnndetection_blur_jpg_prob0.1": {
        "family": "cnnspot",
        "detector": "cnnspot",
        "filename": "blur_jpg_prob0.1.pth",
        "seed": 1,
        "repository": "github.com/PeterWang512/CNNDetection",
        "commit": "ea0b5622365e3a9cd31d1b54b6b5971131a839ab",
    },
    "npr": {
        "family": "npr",
        "detector": "npr",
        "filename": "NPR.pth",
        "seed": 0,
        # the NPR residual is small, so the logits of a random network hardly move with
        # the picture; a larger head makes a resampling change (bilinear vs bicubic)
        # move them by ~0.04, twenty times the tolerance
        "gains": {r"fc1\.weight": 10.0},
        "repository": "github.com/chuangchuangtan/NPR-DeepfakeDetection",
        "commit": "73cde1ced21291bfb504a2add2b53fbe99c4f433",
    },
    "freqnet": {
        "family": "freqnet",
        "detector": "freqnet",
        "filename": "4-classes-freqnet.pth",
        "seed": 0,
        # with seeded weights the raw 1x1 biases drown the frequency convolutions and
        # every picture gives the same logit (to 1e-6); smaller raw biases and larger
        # FCL kernels make the output depend on the picture (bilinear vs bicubic: ~0.05)
        "gains": {r"bias[1-4]": 0.01, r"(real|imag)conv[1-4]\.weight": 10.0},
        "repository": "github.com/chuangchuangtan/FreqNet-DeepfakeDetection",
        "commit": "2c6bd020cda1c0001e7a7d30ebd2dd5c55b5a8b6",
    },
}

FAMILIES: dict[str, dict[str, Any]] = {
    "cnnspot": {
        "files": [
            "networks/resnet.py",
            "eval.py",
            "eval_config.py",
            "validate.py",
            "options/base_options.py",
            "options/test_options.py",
            "data/__init__.py",
            "data/datasets.py",
            "networks/base_model.py",
        ],
        "preprocessing": (
            "eval.py: no resize (opt.no_resize = True), the paper's CenterCrop(224) "
            "(torchvision, zero-padding images smaller than 224), data_augment with "
            "blur_prob = jpg_prob = 0 (identity), ToTensor, Normalize(ImageNet mean/std); "
            "PIL image from ImageFolder (convert('RGB'))"
        ),
        "save": {
            "container": "dict",
            "key": "model",
            "extra": {"optimizer": {"state": {}, "param_groups": []}, "total_steps": 0},
        },
        "no_resize": True,
        "no_crop": False,
        "classes": [""],
        "alternatives": {
            "no_crop": {
                "preprocessing": (
                    "eval.py --no_crop (README, 6/13/2020 update, recommended): the whole "
                    "image, no resize, ToTensor, Normalize(ImageNet mean/std)"
                ),
                "flags": {"no_resize": True, "no_crop": True},
                "deepsift": {"crop": "none"},
            }
        },
    },
    "npr": {
        "files": [
            "networks/resnet.py",
            "test.py",
            "validate.py",
            "options/base_options.py",
            "options/test_options.py",
            "data/__init__.py",
            "data/datasets.py",
            "networks/base_model.py",
        ],
        "preprocessing": (
            "test.py, ForenSynths flags (no_resize=False, no_crop=True): "
            "transforms.Resize((256, 256)) on the PIL image (bilinear), ToTensor, "
            "Normalize(ImageNet mean/std); PIL image from ImageFolder (convert('RGB'))"
        ),
        "save": {"container": "state_dict"},
        "no_resize": False,
        "no_crop": True,
        "classes": "",
        "alternatives": {
            "no_resize": {
                "preprocessing": (
                    "test.py, GANGen-Detection flags (no_resize=True, no_crop=True): the "
                    "whole image, ToTensor, Normalize(ImageNet mean/std); null where the "
                    "authors' forward pass fails (odd sizes)"
                ),
                "flags": {"no_resize": True, "no_crop": True},
                "deepsift": {"resize": "none"},
            }
        },
    },
    "freqnet": {
        "files": [
            "networks/freqnet.py",
            "test.py",
            "validate.py",
            "options/base_options.py",
            "options/test_options.py",
            "data/__init__.py",
            "data/datasets.py",
            "networks/base_model.py",
        ],
        "preprocessing": (
            "test.py, ForenSynths flags (no_resize=False, no_crop=True): "
            "transforms.Resize((256, 256)) on the PIL image (bilinear), ToTensor, "
            "Normalize(ImageNet mean/std); PIL image from ImageFolder (convert('RGB'))"
        ),
        "save": {"container": "state_dict"},
        "no_resize": False,
        "no_crop": True,
        "classes": "",
        "alternatives": {
            "no_resize": {
                "preprocessing": (
                    "test.py, GANGen-Detection flags (no_resize=True, no_crop=True): the "
                    "whole image, ToTensor, Normalize(ImageNet mean/std); null where the "
                    "authors' forward pass fails (odd sizes)"
                ),
                "flags": {"no_resize": True, "no_crop": True},
                "deepsift": {"resize": "none"},
            }
        },
    },
}


@contextlib.contextmanager
def _cuda_is_identity():
    """``Tensor.cuda`` returns the tensor itself (FreqNet builds its kernels with it)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _official_model(family: str) -> torch.nn.Module:
    if family in ("cnnspot", "npr"):
        from networks.resnet import resnet50  # the authors' module, from --repo

        return resnet50(num_classes=1)
    from networks.freqnet import freqnet

    with _cuda_is_identity():
        return freqnet(num_classes=1)


def _official_load(family: str, model: torch.nn.Module, path: Path) -> None:
    if family == "cnnspot":  # eval.py / demo.py
        state_dict = torch.load(path, map_location="cpu")
        model.load_state_dict(state_dict["model"])
    else:  # test.py
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)


def _official_tensors(family: str, root: Path, flags: dict[str, bool]) -> list[torch.Tensor]:
    """The reference pictures through the authors' options, dataset and loader."""
    for i, array in enumerate(reference_images()):
        for folder in ("0_real", "1_fake"):  # ImageFolder wants both classes
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{i}.png")
    from data import create_dataloader
    from options.test_options import TestOptions

    argv, sys.argv = sys.argv, ["test.py", "--gpu_ids", "-1", "--num_threads", "0"]
    try:
        opt = TestOptions().parse(print_options=False)
    finally:
        sys.argv = argv
    spec = FAMILIES[family]
    opt.dataroot = str(root)
    opt.classes = spec["classes"]
    opt.no_resize = flags["no_resize"]
    opt.no_crop = flags["no_crop"]
    opt.batch_size = 1  # one size per batch, as --no_crop needs; the outputs do not depend on it
    tensors = [img for img, label in create_dataloader(opt) if int(label) == 0]
    assert len(tensors) == len(SIZES), len(tensors)
    return tensors


def make(name: str, repo: Path, dtype: str) -> dict[str, Any]:
    fmt = FORMATS[name]
    family = fmt["family"]
    spec = FAMILIES[family]
    sys.path.insert(0, str(repo))
    torch.manual_seed(0)
    model = _official_model(family)
    keys = key_spec(model.state_dict())
    model.load_state_dict(seeded_state_dict(keys, fmt["seed"], fmt.get("gains")))
    reference: dict[str, Any] = {
        "format": name,
        "detector": fmt["detector"],
        "overrides": {},
        "repository": fmt["repository"],
        "commit": fmt["commit"],
        "files": spec["files"],
        "preprocessing": spec["preprocessing"],
        "save": spec["save"],
        "filename": fmt["filename"],
        "seed": fmt["seed"],
        **({"gains": fmt["gains"]} if fmt.get("gains") else {}),
        "images_seed": 0,
        "dtype": dtype,
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "keys": keys,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = write_official_file(reference, Path(tmp) / fmt["filename"])
        model = _official_model(family)
        _official_load(family, model, path)
        model.eval()
        cast = torch.float64 if dtype == "float64" else torch.float32
        model = model.to(cast)
        flags = {"no_resize": spec["no_resize"], "no_crop": spec["no_crop"]}
        tensors = _official_tensors(family, Path(tmp) / "images", flags)
        reference["outputs"] = _official_outputs(model, tensors, cast)
        # other test-time protocols of the same code; tests/test_<detector>.py checks
        # them with the ``deepsift`` preprocessing fields named here
        alternatives = {}
        for alt, protocol in spec.get("alternatives", {}).items():
            tensors = _official_tensors(family, Path(tmp) / alt, protocol["flags"])
            alternatives[alt] = {
                "preprocessing": protocol["preprocessing"],
                "deepsift": protocol["deepsift"],
                **_official_outputs(model, tensors, cast),
            }
    if alternatives:
        reference["alternatives"] = alternatives
    return reference


def _official_outputs(
    model: torch.nn.Module, tensors: list[torch.Tensor], cast: torch.dtype
) -> dict[str, list[float | None]]:
    """validate.py: ``model(in_tens).sigmoid().flatten()``; None where the forward fails."""
    logits: list[float | None] = []
    probs: list[float | None] = []
    with torch.no_grad():
        for tensor in tensors:
            try:
                out = model(tensor.to(cast))
            except RuntimeError as error:  # NPR on odd sizes: a shape mismatch
                print(f"official forward failed on {tuple(tensor.shape)}: {error}")
                logits.append(None)
                probs.append(None)
                continue
            logits.append(float(out.flatten()[0]))
            probs.append(float(out.sigmoid().flatten()[0]))
    return {"logits": logits, "probs": probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--repo", type=Path, required=True, help="checkout of the authors' code")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, fmt in FORMATS.items():
        if fmt["family"] != args.family:
            continue
        reference = make(name, args.repo.resolve(), args.dtype)
        out = HERE / f"{name}.json"
        out.write_text(json.dumps(reference, indent=1) + "\n")
        print(out, np.round(reference["outputs"]["logits"], 4).tolist())


if __name__ == "__main__":
    main()
