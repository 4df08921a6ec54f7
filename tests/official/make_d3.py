"""Make ``d3_classifier.json``: D3's own code on seeded weights.

Reference: github.com/BigAandSmallq/D3 (the official code of Yang et al., CVPR 2025),
commit ``14f21ad3797ef1e42f2f6090aa8ad4fabf07896c``; files run:
``models/clip_models.py`` (``CLIPModelShuffleAttentionPenultimateLayer("ViT-L/14",
shuffle_times=1, original_times=1, patch_size=[14])``, as ``validate_for_robustness.py``
builds it), ``models/transformer_attention.py`` (``TransformerAttention``),
``models/clip/clip.py`` and ``models/clip/model.py`` (OpenAI's CLIP: ``load`` ->
``build_model`` -> ``convert_weights`` (fp16) -> ``model.float()`` on the CPU) and
``validate_for_robustness.py`` (``RealFakeDataset`` reading the pictures from disk,
``model.attention_head.load_state_dict(torch.load(checkpoint))``, ``model(x).sigmoid()``).

Two files make the detector: the released head ``ckpt/classifier.pth``
(``torch.save(model.attention_head.state_dict())``, ``networks/base_model.py``; the
file is stored with Git LFS and was not in the fetched snapshot, so its layout comes
from that saving code and from the loading code above) and OpenAI's ``ViT-L-14.pt``
(``backbone_file``), written here as in ``make_univfd.py``: a TorchScript archive of
the whole CLIP with ``build_model``'s dtypes. Its download (``clip._download``) is
pointed at that file.

The reference draws its patch order with ``torch.randperm`` from the global RNG on each
forward; the global seed is set to deepsift's ``shuffle_seed`` (418) just before the
one forward of the whole batch, so the order is the one deepsift's evaluation uses.
Two shims for today's packages, none in their code: ``pkg_resources`` (which their
``clip.py`` imports) from a site with setuptools < 81 on ``PYTHONPATH``, and
``timm.models.layers.helpers.to_2tuple`` (imported by ``models/vits.py`` through
``models/__init__.py``, unused by D3) aliased to ``timm.layers.to_2tuple``.

Preprocessing (``validate_for_robustness.py``): ``Image.open(path).convert("RGB")`` of
a PNG, ``transforms.Resize((224, 224))`` (PIL bilinear), ``ToTensor``, ``Normalize``
with CLIP's mean/std. Float32.

    PYTHONPATH=<site with pkg_resources> python -m tests.official.make_d3 \\
        --repo /path/to/D3  # a checkout of COMMIT
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from tests.official.make_univfd import (
    dump_reference,
    openai_vit_l14_companion,
    reference_inputs,
    reference_tail,
)
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "d3_classifier"
COMMIT = "14f21ad3797ef1e42f2f6090aa8ad4fabf07896c"
SEED, BACKBONE_SEED, IMAGES_SEED, SHUFFLE_SEED = 0, 1, 0, 418


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    torch.set_num_threads(1)

    import timm.layers

    helpers = types.ModuleType("timm.models.layers.helpers")
    helpers.to_2tuple = timm.layers.to_2tuple  # type: ignore[attr-defined]
    sys.modules["timm.models.layers.helpers"] = helpers

    from models.clip import clip as clip_module  # their code
    from models.clip.model import CLIP, convert_weights
    from models.clip_models import CLIPModelShuffleAttentionPenultimateLayer
    from validate_for_robustness import RealFakeDataset

    backbone = openai_vit_l14_companion(CLIP, convert_weights, BACKBONE_SEED)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip_file = write_official_file(backbone, scratch / backbone["filename"])
        clip_module._download = lambda url, root=None: str(clip_file)  # no network here
        start = time.time()
        model = CLIPModelShuffleAttentionPenultimateLayer(
            "ViT-L/14", shuffle_times=1, original_times=1, patch_size=[14]
        )
        head = {"save": {"container": "state_dict"}, "seed": SEED}
        head["keys"] = key_spec(model.attention_head.state_dict())
        ckpt = write_official_file(head, scratch / "classifier.pth")
        model.attention_head.load_state_dict(torch.load(ckpt, map_location="cpu"))
        model.eval()

        x = reference_inputs(
            scratch, IMAGES_SEED, lambda real, fake: RealFakeDataset(real, fake, None, "clip")
        )
        with torch.no_grad():
            torch.manual_seed(SHUFFLE_SEED)  # the order of shuffle_patches' randperm
            logits = model(x).flatten()
            probs = logits.sigmoid()  # validate(): model(in_tens).sigmoid()
        print(f"official forward: {time.time() - start:.1f} s", file=sys.stderr)

    reference = {
        "format": "D3 (Yang et al.) attention head over CLIP ViT-L/14 original + patch-"
        "shuffled features",
        "detector": "d3",
        "overrides": {},
        "repository": "https://github.com/BigAandSmallq/D3",
        "commit": args.commit,
        "files": [
            "models/clip_models.py",
            "models/transformer_attention.py",
            "models/clip/clip.py",
            "models/clip/model.py",
            "validate_for_robustness.py",
        ],
        "preprocessing": "validate_for_robustness.py RealFakeDataset: PIL RGB, "
        "Resize((224, 224)) (PIL bilinear), ToTensor, Normalize(CLIP mean/std); patch order "
        f"torch.manual_seed({SHUFFLE_SEED}) then randperm(256)",
        "save": head["save"],
        "filename": "classifier.pth",
        **reference_tail(SEED, IMAGES_SEED, head, backbone, logits, probs),
    }
    args.out.write_text(dump_reference(reference))
    print(args.out, reference["outputs"])


if __name__ == "__main__":
    main()
