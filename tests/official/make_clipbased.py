"""Make ``clipbased_clipdet_latent10k_plus.json``: ClipBased's own ``main.py`` on seeded weights.

Reference: github.com/grip-unina/ClipBased-SyntheticImageDetection (Cozzolino et
al., CVPRW 2024), commit ``c76ef7f5e158c5aba9e55b8b94ab0079720d281e``; files run:
``main.py`` (``get_config``, ``runnig_tests``: the model, the ``Clip224`` transform
and the logit per image), ``networks/__init__.py`` (``create_architecture``,
``load_weights``), ``networks/openclipnet.py`` (``OpenClipLinear`` with
``next_to_last=True``: ``visual.proj = None``, ``encode_image(x, normalize=True)``),
``networks/resnet_mod.py`` (``ChannelLinear``), ``utils/processing.py``
(``make_normalize("clip")``) and the released
``weights/clipdet_latent10k_plus/config.yaml`` (``arch:
opencliplinearnext_clipL14commonpool``, ``norm_type: clip``, ``patch_size: Clip224``).
Their ``open_clip`` is the PyPI ``open_clip_torch`` (unpinned in their Dockerfile;
the one installed here ran).

Two files make the detector: the head ``weights.pth`` and the CLIP weights
``open_clip_pytorch_model.bin`` of ``laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K``,
which ``OpenClipLinear`` fetches with ``hf_hub_download`` and deepsift takes as
``backbone_file``. The seeded CLIP file is a ``torch.save`` of the whole open_clip
model's state dict (float32, as that file); ``hf_hub_download`` is pointed at it.
The released head is a Git LFS object of 5155 bytes that the mirror does not hold; it
is written here as ``{'model': {'module.fc.weight', 'module.fc.bias'}}``, the layout
``networks.load_weights`` singles out for it (a DataParallel trainer's
``{'model': state_dict}``); ``load_weights`` also takes it without ``module.``. Its
``fc.weight`` is the seeded one times ``HEAD_SCALE`` (``"gains"``; see below).

Preprocessing (``main.py``, ``patch_size: Clip224``): ``Image.open(f).convert("RGB")``
of a PNG, ``Resize(224, interpolation=BICUBIC)`` (shorter side, PIL, antialiased),
``CenterCrop((224, 224))``, ``ToTensor``, ``Normalize`` with CLIP's mean/std; the logit
is ``out[:, 0]``; ``--fusion soft_or_prob`` of one model is that logit again, so the
probability is ``sigmoid(logit)``. Float32.

    python -m tests.official.make_clipbased --repo /path/to/ClipBased  # a checkout of COMMIT
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.make_univfd import dump_reference
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "clipbased_clipdet_latent10k_plus"
COMMIT = "c76ef7f5e158c5aba9e55b8b94ab0079720d281e"
MODEL = "clipdet_latent10k_plus"
ARCH = "opencliplinearnext_clipL14commonpool"
SEED, BACKBONE_SEED, IMAGES_SEED = 0, 1, 0
#: the released head is a linear SVM on unit-norm features: logits of several units.
#: The seeded N(0, 1/1024) weight (norm ~1) leaves them within 0.02 of the bias, where
#: a bilinear resize instead of bicubic moves them by 2e-4 only; x100 makes them O(1)
HEAD_SCALE = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    torch.set_num_threads(1)

    import huggingface_hub
    import main as clipbased_main  # their code
    import open_clip
    from networks import create_architecture

    shell = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    backbone = {
        "filename": "open_clip_pytorch_model.bin",
        "save": {"container": "state_dict"},
        "seed": BACKBONE_SEED,
        "keys": key_spec(shell.state_dict()),
    }
    del shell

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip_file = write_official_file(backbone, scratch / backbone["filename"])
        huggingface_hub.hf_hub_download = lambda *a, **k: str(clip_file)  # no network here

        # the head's keys: the official model's state dict (OpenClipLinear keeps the
        # backbone in a list, so only fc), as DataParallel + {'model': ...} saves it
        head = {
            "save": {"container": "dict", "key": "model", "prefix": "module."},
            "seed": SEED,
            "gains": {r"fc\.weight": HEAD_SCALE},
            "keys": key_spec(create_architecture(ARCH).state_dict()),
        }
        weights_dir = scratch / "weights"
        (weights_dir / MODEL).mkdir(parents=True)
        shutil.copy(repo / "weights" / MODEL / "config.yaml", weights_dir / MODEL / "config.yaml")
        write_official_file(head, weights_dir / MODEL / "weights.pth")

        pictures = reference_images(IMAGES_SEED)
        names = []
        for i, array in enumerate(pictures):
            Image.fromarray(array).save(scratch / f"{i}.png")
            names.append(f"{i}.png")
        csv = scratch / "list.csv"
        csv.write_text("filename\n" + "\n".join(names) + "\n")
        start = time.time()
        table = clipbased_main.runnig_tests(str(csv), str(weights_dir), [MODEL], "cpu")
        print(f"official run: {time.time() - start:.1f} s", file=sys.stderr)
        logits = table[MODEL].to_numpy(dtype=np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))

    reference = {
        "format": "ClipBased weights.pth (clipdet_latent10k_plus, CLIP ViT-L/14 next-to-last)",
        "detector": "clipbased",
        "overrides": {},
        "repository": "https://github.com/grip-unina/ClipBased-SyntheticImageDetection",
        "commit": args.commit,
        "files": [
            "main.py",
            "networks/__init__.py",
            "networks/openclipnet.py",
            "networks/resnet_mod.py",
            "utils/processing.py",
            "weights/clipdet_latent10k_plus/config.yaml",
        ],
        "preprocessing": "main.py Clip224: PIL RGB, Resize(224, BICUBIC) of the shorter "
        "side, CenterCrop(224), ToTensor, Normalize(CLIP mean/std)",
        "save": head["save"],
        "filename": "weights.pth",
        "seed": SEED,
        "gains": head["gains"],
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
