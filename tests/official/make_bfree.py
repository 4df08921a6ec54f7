"""Make ``bfree_tiny.json``: B-Free's own five-crop wrapper and normalisation on seeded weights.

Reference: github.com/grip-unina/B-Free (Guillaro et al., CVPR 2025), commit
``c6a9f898782fb466b29af01f21960b67415afb0e``; files run: ``code/networks/__init__.py``
(``load_weights``: ``torch.load(path)['model']`` into the wrapper),
``code/networks/wrapper5crops.py`` (``Wrapper5crops``: patch projection of the whole
image, ``replicate_wrap`` when the grid is small, five grid crops, mean logit),
``code/utils/normalization.py`` (``get_list_norm('resnet')``: ``ToTensor``, ImageNet
``Normalize``), and ``code/main_bfree.py``'s per-image loop (``Image.open(f).convert('RGB')``,
``transform``, ``model(image[None])``, one logit).

``get_network('timm_c5i504_<arch>')`` is ``timm.create_model(arch, num_classes=1)``
wrapped by ``Wrapper5crops(model, 504)``; here the same two calls build a tiny ViT of
the same timm class (``vit_base_patch14_reg4_dinov2``: 14 px patches, 4 registers) with
``img_size``/``embed_dim``/``depth``/``num_heads`` overrides and 56 px crops (a 4 x 4
grid): the full ViT-B/14 at 504 px is too slow for the test suite on a CPU. deepsift
gets the same architecture through ``overrides`` (``crop_size``, ``model_args``).
Checked once outside the suite at full size (their ``get_network('timm_c5i504_vit_base_
patch14_reg4_dinov2.lvd142m')``, seed-0 weights in ``{'model': ...}``, the 640 x 480 and
480 x 640 reference pictures): deepsift's ``load_detector('bfree', weights=...)`` gave the
same logits (-0.70577, -0.69144; |difference| 0.0), about a minute per picture on a CPU.

    python -m tests.official.make_bfree --repo /path/to/B-Free  # a checkout of COMMIT
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.make_univfd import dump_reference
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "bfree_tiny"
COMMIT = "c6a9f898782fb466b29af01f21960b67415afb0e"
ARCH = "vit_base_patch14_reg4_dinov2"
CROP = 56
MODEL_ARGS = {"img_size": CROP, "embed_dim": 32, "depth": 2, "num_heads": 2}
SEED, IMAGES_SEED = 0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve() / "code"))
    torch.set_num_threads(1)

    import timm
    from networks import load_weights  # their code
    from networks.wrapper5crops import Wrapper5crops
    from torchvision.transforms import Compose
    from utils.normalization import get_list_norm

    model = Wrapper5crops(timm.create_model(ARCH, num_classes=1, **MODEL_ARGS), CROP)
    # the file holds the plain timm keys (the wrapper's load_state_dict splits off patch_embed.)
    plain = {f"patch_embed.{k}": v for k, v in model.patch_embed.state_dict().items()}
    plain.update(model.model.state_dict())
    spec = {"save": {"container": "dict", "key": "model"}, "seed": SEED, "keys": key_spec(plain)}
    transform = Compose(get_list_norm("resnet"))
    logits = []
    with tempfile.TemporaryDirectory() as scratch:
        path = write_official_file(spec, Path(scratch) / "model_epoch_best.pth")
        model = load_weights(model, str(path)).eval()
        for i, array in enumerate(reference_images(IMAGES_SEED)):
            png = Path(scratch) / f"{i}.png"
            Image.fromarray(array).save(png)
            image = transform(Image.open(png).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                logits.append(float(model(image)[0, 0]))
    probs = torch.tensor(logits).sigmoid().tolist()

    reference = {
        "format": "B-Free model_epoch_best.pth ({'model': timm ViT state dict}), tiny ViT",
        "detector": "bfree",
        "overrides": {"crop_size": CROP, "model_args": MODEL_ARGS},
        "repository": "https://github.com/grip-unina/B-Free",
        "commit": args.commit,
        "files": [
            "code/networks/__init__.py",
            "code/networks/wrapper5crops.py",
            "code/utils/normalization.py",
            "code/main_bfree.py",
        ],
        "preprocessing": "main_bfree.py: PIL RGB, the whole image (no resize, no crop), "
        "ToTensor, Normalize(ImageNet mean/std) (norm_type resnet); the network takes five "
        "crops of its patch grid and averages their logits",
        "save": spec["save"],
        "filename": "model_epoch_best.pth",
        "seed": SEED,
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 1e-5},
        "keys": spec["keys"],
        "outputs": {
            "logits": [round(v, 7) for v in logits],
            "probs": [round(float(v), 7) for v in probs],
        },
    }
    args.out.write_text(dump_reference(reference))
    print(args.out, reference["outputs"])


if __name__ == "__main__":
    main()
