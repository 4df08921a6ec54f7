"""Make ``univfd_fc_weights.json``: UniversalFakeDetect's own code on seeded weights.

Reference: github.com/Yuheng-Li/UniversalFakeDetect (the official code of Ojha, Li
and Lee, CVPR 2023), commit ``1abc48606aea45e18d10847e51d21d6173cc957d``; files run:
``models/__init__.py`` (``get_model("CLIP:ViT-L/14")``), ``models/clip_models.py``
(``CLIPModel``: ``clip.load(name, device="cpu")``, ``fc(model.encode_image(x))``),
``models/clip/clip.py`` and ``models/clip/model.py`` (OpenAI's CLIP: ``load`` ->
``build_model`` -> ``convert_weights`` (fp16) -> ``model.float()`` on the CPU),
``validate.py`` (``RealFakeDataset`` reading the pictures from disk,
``model.fc.load_state_dict(torch.load(ckpt))``, ``model(x).sigmoid()``).

Two files make the detector: the released head ``fc_weights.pth`` (``torch.save`` of
``fc.state_dict()``: ``weight`` (1, 768), ``bias`` (1,)) and OpenAI's
``ViT-L-14.pt``, which ``clip.load`` fetches and deepsift takes as
``backbone_file``. The seeded CLIP file here is, like OpenAI's, a TorchScript archive
of the whole CLIP model (image and text towers, and the ``input_resolution``,
``context_length``, ``vocab_size`` counters ``build_model`` drops) with the dtypes
``build_model`` gives it (``convert_weights``: conv/linear/attention/projection
tensors in float16, as OpenAI ships them; the rest float32). It holds tensors only (no
forward code): ``clip.load(jit=False)`` reads just ``state_dict()`` of the archive and
rebuilds the model with ``build_model``. Its download (``clip._download``) is pointed
at that file; nothing else of their code is replaced.

Preprocessing (``validate.py``): ``Image.open(path).convert("RGB")`` of a PNG,
``transforms.CenterCrop(224)`` (no resize; smaller pictures zero-padded),
``ToTensor``, ``Normalize`` with CLIP's mean/std. Float32 (their ``LayerNorm``
computes in float32 whatever the input dtype, so a float64 run would not be one).

    PYTHONPATH=<site with setuptools<81 for pkg_resources> python -m \\
        tests.official.make_univfd --repo /path/to/UniversalFakeDetect  # a checkout of COMMIT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "univfd_fc_weights"
COMMIT = "1abc48606aea45e18d10847e51d21d6173cc957d"
SEED, BACKBONE_SEED, IMAGES_SEED = 0, 1, 0


def dump_reference(reference: dict) -> str:
    """JSON with one line per field, per key of a ``keys`` list, per companion field."""

    def block(mapping: dict, pad: str) -> list[str]:
        lines = []
        for name, value in mapping.items():
            if name == "keys":
                rows = [f"{pad}  {json.dumps(row)}" for row in value]
                lines.append(f"{pad}{json.dumps(name)}: [\n" + ",\n".join(rows) + f"\n{pad}]")
            elif name == "companions":
                inner = [
                    f"{pad}  {json.dumps(arg)}: {{\n"
                    + ",\n".join(block(spec, pad + "    "))
                    + f"\n{pad}  }}"
                    for arg, spec in value.items()
                ]
                lines.append(f"{pad}{json.dumps(name)}: {{\n" + ",\n".join(inner) + f"\n{pad}}}")
            else:
                lines.append(f"{pad}{json.dumps(name)}: {json.dumps(value)}")
        return lines

    return "{\n" + ",\n".join(block(reference, " ")) + "\n}\n"


def openai_vit_l14_companion(clip_class: Any, convert_weights: Any, seed: int) -> dict:
    """The spec of OpenAI's ``ViT-L-14.pt`` (a TorchScript archive) for the authors' ``CLIP``
    class (``models/clip/model.py``, ``build_model``'s hyper-parameters read off that file),
    built on the meta device: fp16 like ``convert_weights``, plus its three int64 scalars."""
    with torch.device("meta"):
        shell = clip_class(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12)
        convert_weights(shell)
    return {
        "filename": "ViT-L-14.pt",
        "save": {"container": "torchscript"},
        "seed": seed,
        "keys": key_spec(shell.state_dict())
        + [[name, [], "int64"] for name in ("input_resolution", "context_length", "vocab_size")],
    }


def reference_inputs(scratch: Path, images_seed: int, dataset: Callable[[str, str], Any]) -> Any:
    """``reference_images(images_seed)`` saved as ``scratch/{real,fake}/<i>.png``, read by the
    authors' ``dataset(real, fake)`` (a ``RealFakeDataset``); the real ones stacked in order."""
    pictures = reference_images(images_seed)
    for folder in ("real", "fake"):
        (scratch / folder).mkdir()
        for i, array in enumerate(pictures):
            Image.fromarray(array).save(scratch / folder / f"{i}.png")
    data = dataset(str(scratch / "real"), str(scratch / "fake"))
    by_index = {}
    for idx, path in enumerate(data.total_list):
        if "/real/" in path:
            by_index[int(Path(path).stem)] = data[idx][0]
    return torch.stack([by_index[i] for i in range(len(pictures))])


def reference_tail(
    seed: int, images_seed: int, head: dict, backbone: dict, logits: Any, probs: Any
) -> dict:
    """The fields after ``filename`` of a UnivFD-family reference, in their order."""
    return {
        "seed": seed,
        "images_seed": images_seed,
        "dtype": "float32",
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "keys": head["keys"],
        "companions": {"backbone_file": backbone},
        "outputs": {
            "logits": [round(float(v), 7) for v in logits],
            "probs": [round(float(v), 7) for v in probs],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    torch.set_num_threads(1)

    from models import get_model  # their code
    from models.clip import clip as clip_module
    from models.clip.model import CLIP, convert_weights
    from validate import RealFakeDataset

    backbone = openai_vit_l14_companion(CLIP, convert_weights, BACKBONE_SEED)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip_file = write_official_file(backbone, scratch / backbone["filename"])
        clip_module._download = lambda url, root=None: str(clip_file)  # no network here
        start = time.time()
        model = get_model("CLIP:ViT-L/14")
        head = {"save": {"container": "state_dict"}, "seed": SEED}
        head["keys"] = key_spec(model.fc.state_dict())
        ckpt = write_official_file(head, scratch / "fc_weights.pth")
        model.fc.load_state_dict(torch.load(ckpt, map_location="cpu"))  # validate.py
        model.eval()

        x = reference_inputs(
            scratch,
            IMAGES_SEED,
            lambda real, fake: RealFakeDataset(real, fake, "ours", None, "CLIP:ViT-L/14"),
        )
        with torch.no_grad():
            logits = model(x).flatten()
            probs = logits.sigmoid()  # validate(): model(in_tens).sigmoid()
        print(f"official forward: {time.time() - start:.1f} s", file=sys.stderr)

    reference = {
        "format": "UnivFD fc_weights.pth (CLIP ViT-L/14 linear probe head)",
        "detector": "univfd",
        "overrides": {},
        "repository": "https://github.com/Yuheng-Li/UniversalFakeDetect",
        "commit": args.commit,
        "files": [
            "models/__init__.py",
            "models/clip_models.py",
            "models/clip/clip.py",
            "models/clip/model.py",
            "validate.py",
        ],
        "preprocessing": "validate.py RealFakeDataset: PIL RGB, CenterCrop(224) without "
        "resizing (zero-padded when smaller), ToTensor, Normalize(CLIP mean/std)",
        "save": head["save"],
        "filename": "fc_weights.pth",
        **reference_tail(SEED, IMAGES_SEED, head, backbone, logits, probs),
    }
    args.out.write_text(dump_reference(reference))
    print(args.out, reference["outputs"])


if __name__ == "__main__":
    main()
