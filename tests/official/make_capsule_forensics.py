"""Make the Capsule-Forensics-v2 reference from the authors' own code (not run by the tests).

``capsule_forensics`` (``capsule_<epoch>.pt``): github.com/nii-yamagishilab/
Capsule-Forensics-v2 at e12f40539d6a0e2137f9d3adc41c05ca43fef173. Code that runs:
``model_big.py`` (``VggExtractor``: ``models.vgg19(pretrained=True).features[0:19]``,
eval mode; ``CapsuleNet(2, gpu_id=-1)``), and ``test_binary_ffpp.py``'s test path: its
transform (``transforms.Compose([Resize((300, 300)), ToTensor(), Normalize(ImageNet)])``
on the PIL image ``ImageFolder`` loads, written out here as the script writes it: the
script runs its ``main`` at import), ``capnet.load_state_dict(torch.load(
'capsule_<id>.pt'))``, ``capnet.eval()``, ``classes, class_ = capnet(vgg_ext(x),
random=False)``, ``softmax(class_)[:, 1]``. Saved as ``train_binary_ffpp.py`` saves
(``torch.save(capnet.state_dict(), 'capsule_%d.pt')``: the capsule layers only).

The VGG-19 is torchvision's ImageNet one, never trained, so the reference has a
companion file (``companions``): seeded ``features.0`` ... ``features.16`` (the layers
``VggExtractor`` keeps) saved as ``vgg19-dcbb9e9d.pth`` and handed to deepsift as
``pretrained_file``; here ``models.vgg19`` is built without the download (torchvision
0.29 no longer takes ``pretrained=``) and given the same tensors. The classifier of
the ImageNet file (120 M numbers) is left out of the companion: neither side reads it.

Usage (a scratch checkout outside the project)::

    PYTHONPATH=. python tests/official/make_capsule_forensics.py --repo <Capsule-Forensics-v2>
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import dumps
from tests.official.weights import HERE, key_spec, seeded_state_dict, write_official_file

SEED = 0
VGG_SEED = 1
COMMIT = "e12f40539d6a0e2137f9d3adc41c05ca43fef173"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    vgg19 = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda pretrained=False, **kw: vgg19(weights=None, **kw)
    model_big = importlib.import_module("model_big")
    vgg_ext = model_big.VggExtractor()
    capnet = model_big.CapsuleNet(2, -1)
    vgg_keys = [
        [f"features.{k}", shape, dtype] for k, shape, dtype in key_spec(vgg_ext.vgg_1.state_dict())
    ]
    reference = {
        "format": "Capsule-Forensics-v2 CapsuleNet (capsule_<epoch>.pt)",
        "detector": "capsule_forensics",
        "overrides": {},
        "repository": "https://github.com/nii-yamagishilab/Capsule-Forensics-v2",
        "commit": COMMIT,
        "files": ["model_big.py", "test_binary_ffpp.py", "train_binary_ffpp.py"],
        "preprocessing": "test_binary_ffpp.py: ImageFolder's PIL image, transforms.Resize((300, "
        "300)) (Pillow bilinear), ToTensor, Normalize(ImageNet)",
        "save": {"container": "state_dict"},
        "filename": "capsule_21.pt",
        # the official init is randn (std 1); the seeded N(0, 1/320) leaves every class
        # capsule near zero and every logit at 4e-5; smaller running variances give the
        # primary capsules' batch norms a gain near 1
        "gains": {r"routing_stats\.route_weights": 320**0.5, r".*running_var": 0.3},
        "companions": {
            "pretrained_file": {
                "filename": "vgg19-dcbb9e9d.pth",
                "save": {"container": "state_dict"},
                "seed": VGG_SEED,
                # He's gain for ReLU: without it VGG's 8 convolutions shrink the input tenfold
                "gains": {r".*weight": 2**0.5},
                "keys": vgg_keys,
            }
        },
        "seed": SEED,
        "images_seed": 0,
        "image_sizes": [list(s) for s in SIZES],
        "dtype": args.dtype,
        # tighter than the 2e-3 / 1e-4: the logit is a mean of tanh(d / 2) over
        # squashed capsules (within +-0.462) and moves 6e-4 when the resize is cv2's
        # instead of Pillow's, so 2e-3 would not tell them apart; float32 runs agree to 0
        "tolerance": {"logit": 3e-5, "prob": 1e-5},
        "keys": key_spec(capnet.state_dict()),
    }
    companion = reference["companions"]["pretrained_file"]
    vgg_state = seeded_state_dict(vgg_keys, VGG_SEED, companion["gains"])
    vgg_ext.vgg_1.load_state_dict({k.removeprefix("features."): v for k, v in vgg_state.items()})
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as the official code does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        capnet.load_state_dict(torch.load(path, map_location="cpu"))
    capnet.eval()
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize((300, 300)),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    vgg_ext.to(dtype)
    capnet.to(dtype)
    logits, probs = [], []
    with torch.no_grad():
        for array in reference_images():
            x = transform(Image.fromarray(array).convert("RGB"))[None].to(dtype)
            _, class_ = capnet(vgg_ext(x), random=False)
            logits.append(float(class_[0, 1].double() - class_[0, 0].double()))
            probs.append(float(torch.softmax(class_, dim=1)[0, 1]))
    reference["outputs"] = {"logits": logits, "probs": probs}
    print("capsule_forensics", np.round(logits, 5).tolist(), np.round(probs, 5).tolist())
    out = HERE / "capsule_forensics.json"
    out.write_text(dumps(reference))
    print("wrote", out)


if __name__ == "__main__":
    main()
