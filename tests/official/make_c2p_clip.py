"""Make ``c2p_clip_tiny.json``: the authors' ``C2P_CLIP`` module and test transform on seeded weights.

Reference: github.com/chuangchuangtan/C2P-CLIP-DeepfakeDetection (Tan et al., AAAI 2025),
commit ``27b52325df1d80cf2291ef83a5c59f5fe715052f``; files run: ``inference.py``
(``C2P_CLIP``: ``CLIPModel.from_pretrained(name)`` without its text tower, ``fc`` on the
L2-normalised image embedding; ``model.load_state_dict(state_dict, strict=True)``) and
``data.py`` (``dataset_folder``'s transform: ``Resize(224)``, ``CenterCrop(224)``,
``ToTensor``, CLIP ``Normalize``; ``pil_loader``).

``C2P_CLIP`` loads ``openai/clip-vit-large-patch14``; here ``name`` is a folder holding a
tiny ``CLIPModel`` (``save_pretrained``) of the same class: a vision tower of width 32
and 2 layers at the full 224 px input (16 x 16 patches of 14 px) with the reference's
768-d projection (``fc`` is ``Linear(768, 1)`` in their code), so the official
preprocessing runs unchanged. deepsift gets the same tower through ``overrides``
(``vision``). Run with transformers 5.x (the authors used 4.42.3; the vision keys are
the same: ``position_ids`` is a non-persistent buffer in both).

    python -m tests.official.make_c2p_clip --repo /path/to/C2P-CLIP-DeepfakeDetection
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.make_univfd import dump_reference
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "c2p_clip_tiny"
COMMIT = "27b52325df1d80cf2291ef83a5c59f5fe715052f"
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
#: a head of realistic norm on the unit-norm embedding (seeded N(0, 1/768) logits barely move)
GAINS = {r"model\.fc\.weight": 40.0}
SEED, IMAGES_SEED = 0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    torch.set_num_threads(1)
    if "sklearn" not in sys.modules:  # inference.py imports sklearn.metrics for its report only
        try:
            import sklearn.metrics  # noqa: F401
        except ImportError:
            metrics = types.ModuleType("sklearn.metrics")
            for fn in ("average_precision_score", "precision_recall_curve", "accuracy_score"):
                setattr(metrics, fn, None)
            sys.modules["sklearn"] = types.ModuleType("sklearn")
            sys.modules["sklearn.metrics"] = metrics

    import inference  # their code (seeds torch on import)
    from data import dataset_folder
    from transformers import CLIPConfig, CLIPModel

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "clip-tiny"
        config = CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=768)
        CLIPModel(config).save_pretrained(folder)
        model = inference.C2P_CLIP(name=str(folder), num_classes=1)
        spec = {
            "save": {"container": "state_dict"},
            "seed": SEED,
            "gains": GAINS,
            "keys": key_spec(model.state_dict()),
        }
        path = write_official_file(spec, Path(scratch) / "C2P_CLIP_release_20240901.zip")
        state = torch.load(path, map_location="cpu")
        model.load_state_dict(state, strict=True)
        model.eval()
        opt = types.SimpleNamespace(loadSize=224, cropSize=224)
        root = Path(scratch) / "images"  # their ImageFolder2 wants 0_real and 1_fake
        (root / "0_real").mkdir(parents=True)
        (root / "1_fake").mkdir()
        arrays = reference_images(IMAGES_SEED)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / "0_real" / f"{i}.png")
        Image.fromarray(arrays[0]).save(root / "1_fake" / "0.png")
        dataset = dataset_folder(opt, str(root))
        by_path = {Path(p).name: i for i, (p, t) in enumerate(dataset.samples) if t == 0}
        logits = []
        for i in range(len(arrays)):
            image, _, _ = dataset[by_path[f"{i}.png"]]
            with torch.no_grad():
                logits.append(float(model(image[None])[0, 0]))
    probs = torch.tensor(logits).sigmoid().tolist()

    reference = {
        "format": "C2P-CLIP C2P_CLIP_release_20240901.zip (torch.save of C2P_CLIP.state_dict()), "
        "tiny vision tower",
        "detector": "c2p_clip",
        "overrides": {"vision": VISION},
        "repository": "https://github.com/chuangchuangtan/C2P-CLIP-DeepfakeDetection",
        "commit": args.commit,
        "files": ["inference.py", "data.py"],
        "preprocessing": "data.py: PIL RGB, Resize(224) (shorter side, bilinear), "
        "CenterCrop(224), ToTensor, Normalize(CLIP mean/std)",
        "save": spec["save"],
        "filename": "C2P_CLIP_release_20240901.zip",
        "seed": SEED,
        "gains": GAINS,
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
