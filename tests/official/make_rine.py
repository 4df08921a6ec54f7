"""Make ``rine_official.json``: RINE's own model and test-time code on seeded weights.

Reference: github.com/mever-team/rine (the official code of Koutlis and Papadopoulos,
ECCV 2024), commit ``9b7fd5857cc205d0412be6aeee0d7611b95bd620``; files run:
``src/models.py`` (``Model``: ``clip.load(backbone[0], device)``, forward hooks on every
``clip.visual`` module whose name contains ``ln_2``, ``torch.stack(..., dim=2)[0]``
(the CLS token of each block), ``proj1``, softmax(``alpha``)-weighted sum, ``proj2``,
``head``) and ``src/utils.py`` (``get_our_trained_model(ncls=2, device="cpu")``: the
released ``ckpt/model_2class_trainable.pth`` set parameter by parameter with their
``exec`` loop; ``get_transforms()[1]``: ``CenterCrop(224)`` without resizing,
``ToTensor``, CLIP ``Normalize``), with OpenAI's ``clip`` package (github.com/openai/CLIP,
commit ``d05afc436d78f1c48dc0dbf8e5980a9d471f35f6``, what their requirements install:
``load`` -> TorchScript archive's ``state_dict()`` -> ``build_model`` ->
``convert_weights`` (fp16) -> ``model.float()`` on the CPU).

Files: the trainable part exactly as their training code saves it (``torch.save`` of
the model's state dict without the ``clip.*`` keys; the released 2-class layout,
``nproj=4``, ``proj_dim=128``) and the CLIP archive ``clip.load`` fetches
(``clip._download`` is pointed at it; nothing else of their code is replaced). So
that a CPU test stays short, the CLIP is ViT-L/14's width (1024, 16 heads) and input
(224 px) with 2 blocks of patch 32 instead of 24 blocks of patch 14, and a one-block,
64-wide text tower; ``build_model`` reads all of that off the file. The head's
``alpha`` is then (1, 2, 128) instead of (1, 24, 128). Float32 (on a GPU their
``clip.load`` keeps CLIP in float16; deepsift runs it in float32).

    python -m tests.official.make_rine --repo /path/to/rine --clip /path/to/CLIP
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.make_univfd import dump_reference
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "rine_official"
COMMIT = "9b7fd5857cc205d0412be6aeee0d7611b95bd620"
CLIP_COMMIT = "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6"
SEED, BACKBONE_SEED, IMAGES_SEED = 0, 1, 0
#: clip.model.CLIP arguments of the reduced ViT-L/14 (see the docstring)
CLIP_ARGS = {
    "embed_dim": 64,
    "image_resolution": 224,
    "vision_layers": 2,
    "vision_width": 1024,
    "vision_patch_size": 32,
    "context_length": 8,
    "vocab_size": 64,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 1,
}
#: He-like gain on the 11 ReLU layers of the head, so that seeded weights do not shrink
#: the block tokens' differences to nothing (the logits then tell GELU from QuickGELU)
GAINS = {r"(proj1|proj2|head)\.\d+\.weight": 1.5}
#: the same network in deepsift's (open_clip's) terms
OVERRIDES = {
    "vision_cfg": {
        "image_size": 224,
        "layers": 2,
        "width": 1024,
        "patch_size": 32,
        "head_width": 64,
    },
    "embed_dim": 64,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a checkout of COMMIT")
    parser.add_argument("--clip", type=Path, required=True, help="a checkout of openai/CLIP")
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # their utils.py imports cv2 and scipy.ndimage.filters (training augmentation only)
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.filters", scipy.ndimage)
    sys.path[:0] = [str(args.clip.resolve()), str(args.repo.resolve())]
    import clip
    from clip.model import CLIP, convert_weights

    with torch.device("meta"):
        shell = CLIP(**CLIP_ARGS)
        convert_weights(shell)
    backbone = {
        "filename": "ViT-L-14.pt",
        "save": {"container": "torchscript"},
        "seed": BACKBONE_SEED,
        "keys": key_spec(shell.state_dict())
        + [[name, [], "int64"] for name in ("input_resolution", "context_length", "vocab_size")],
    }
    del shell

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip_file = write_official_file(backbone, scratch / backbone["filename"])
        clip.clip._download = lambda url, root=None: str(clip_file)  # no network here
        from src.models import Model
        from src.utils import get_our_trained_model, get_transforms

        # the trainable part as their training code saves it ("clip" not in the key)
        probe = Model(backbone=("ViT-L/14", 1024), nproj=4, proj_dim=128, device="cpu")
        head = {
            "filename": "model_2class_trainable.pth",
            "save": {"container": "state_dict"},
            "seed": SEED,
            "keys": key_spec({k: v for k, v in probe.state_dict().items() if "clip" not in k}),
            "gains": GAINS,
        }
        (scratch / "ckpt").mkdir()
        write_official_file(head, scratch / "ckpt" / head["filename"])
        os.chdir(scratch)  # get_our_trained_model reads ckpt/model_2class_trainable.pth
        model = get_our_trained_model(ncls=2, device="cpu").eval()
        _, transform, _ = get_transforms()
        tensors = []
        for i, array in enumerate(reference_images(IMAGES_SEED)):
            Image.fromarray(array).save(scratch / f"{i}.png")
            tensors.append(transform(Image.open(scratch / f"{i}.png").convert("RGB")))
        with torch.no_grad():
            logits = torch.cat([model(x[None])[0].flatten() for x in tensors])
            probs = logits.sigmoid()

    reference = {
        "format": "RINE (Koutlis & Papadopoulos) trainable parts",
        "detector": "rine",
        "overrides": OVERRIDES,
        "repository": "https://github.com/mever-team/rine",
        "commit": args.commit,
        "files": [
            "src/models.py",
            "src/utils.py",
            f"openai/CLIP@{CLIP_COMMIT}: clip/clip.py, clip/model.py",
        ],
        "preprocessing": "get_transforms()[1]: PIL RGB, CenterCrop(224) without resizing "
        "(zero-padded when smaller), ToTensor, Normalize(CLIP mean/std)",
        "save": head["save"],
        "filename": head["filename"],
        "seed": SEED,
        "gains": GAINS,
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "keys": head["keys"],
        "companions": {"backbone_file": backbone},
        "outputs": {
            "logits": [round(float(v), 7) for v in logits],
            "probs": [round(float(v), 7) for v in probs],
        },
    }
    args.out.write_text(dump_reference(reference))
    print(args.out, reference["outputs"])


if __name__ == "__main__":
    main()
