"""Make ``deepfakebench/deepfakebench_capsule_net.json``: DeepfakeBench's Capsule on seeded weights.

Reference: github.com/SCLBD/DeepfakeBench, commit
``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04``: ``training/detectors/capsule_net_detector.py``
(``CapsuleNetDetector``: ``VggExtractor``, ``FeatureExtractor``, ``RoutingLayer`` with
``random=False, dropout=0.0``, ``prob = softmax(mean over the capsule dimension of
softmax(z))[:, 1]``), ``training/config/detector/capsule_net.yaml`` and the test-time
input of ``training/dataset/abstract_dataset.py`` (``load_rgb``: ``cv2.imread``,
``BGR2RGB``, ``cv2.resize((256, 256), INTER_CUBIC)``; ``ToTensor``; ``Normalize(0.5,
0.5)``), through ``make_deepfakebench_xception.official_inputs``; the file as
``trainer.save_ckpt`` writes it (``torch.save(model.state_dict())``), loaded strictly into
a fresh model (``test.py``).

Not in its own folder's top level: the file has deepsift's own key layout, so it cannot
bring its protocol (``detectors.formats.CAPSULE_SHARED_LAYOUT``); the test passes
DeepfakeBench's input, as ``experiment=reproduce/deepfakebench_capsule_forensics`` does.

Changes to their code, none numerical: ``torchvision.models.vgg19(pretrained=True)``
builds an untrained VGG-19 (the seeded weights replace it; no download here);
``torch.utils.tensorboard``, ``lmdb`` and ``albumentations`` (imported by modules on this
path, used only in training) are empty stand-ins. Seeded weights with the gains of
``make_capsule_forensics.py`` (routing weights x sqrt(320), BN variances x 0.3, VGG
weights x sqrt(2)), so the outputs move with the input. Float32.

    python -m tests.official.make_deepfakebench_capsule --repo <DeepfakeBench checkout>
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from tests.official.weights import HERE, key_spec, seeded_state_dict

COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
OUT = HERE / "deepfakebench" / "deepfakebench_capsule_net.json"
SEED, IMAGES_SEED = 16, 0
GAINS = {
    r"routing_stats\.route_weights": 320**0.5,
    r".*running_var": 0.3,
    r"vgg_ext\.vgg_1\.\d+\.weight": 2**0.5,
}


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchvision
    import yaml

    from tests.official.make_deepfakebench_xception import _package, official_inputs

    training = args.repo.resolve() / "training"
    sys.path.insert(0, str(training))
    _stub("torch.utils.tensorboard", SummaryWriter=None)
    _stub("lmdb")
    _stub("albumentations", DualTransform=object, ImageOnlyTransform=object)
    _stub("albumentations.augmentations")
    _stub("albumentations.augmentations.crops")
    _stub("albumentations.augmentations.crops.functional", crop=None)
    untrained = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda pretrained=False, **kw: untrained(weights=None)
    registry = importlib.import_module("metrics.registry")
    _package("detectors", training / "detectors").DETECTOR = registry.DETECTOR
    _package("networks", training / "networks").BACKBONE = registry.BACKBONE
    _package("loss", training / "loss").LOSSFUNC = registry.LOSSFUNC
    importlib.import_module("loss.capsule_loss")
    importlib.import_module("detectors.capsule_net_detector")
    _package("dataset", training / "dataset")
    dataset = importlib.import_module("dataset.abstract_dataset")

    config = yaml.safe_load((training / "config" / "detector" / "capsule_net.yaml").read_text())
    model = registry.DETECTOR["capsule_net"](config)
    spec = key_spec(model.state_dict())
    model.load_state_dict(seeded_state_dict(spec, SEED, GAINS), strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt_best.pth"
        torch.save(model.state_dict(), path)  # trainer.save_ckpt
        model = registry.DETECTOR["capsule_net"](config)
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)  # test.py
        model.eval()
        inputs = official_inputs(dataset, config, Path(tmp))
    logits, probs = [], []
    with torch.no_grad():
        for tensor in inputs:
            pred = model({"image": tensor[None]}, inference=True)
            cls = pred["cls"].double()
            logits.append(float(cls[0, 1] - cls[0, 0]))
            probs.append(float(pred["prob"][0]))
    reference = {
        "format": "DeepfakeBench capsule_net checkpoint (trainer.save_ckpt)",
        "detector": "capsule_forensics",
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "commit": args.commit,
        "files": [
            "training/detectors/capsule_net_detector.py",
            "training/config/detector/capsule_net.yaml",
            "training/dataset/abstract_dataset.py",
            "training/trainer/trainer.py",
            "training/test.py",
        ],
        "preprocessing": "load_rgb: cv2.imread (PNG), BGR2RGB, cv2.resize((256, 256), "
        "INTER_CUBIC); ToTensor; Normalize(0.5, 0.5); one picture per batch. Not recorded "
        "in the file: pass experiment=reproduce/deepfakebench_capsule_forensics",
        "save": {"container": "state_dict"},
        "filename": "ckpt_best.pth",
        "seed": SEED,
        "gains": GAINS,
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 1e-5},
        "keys": spec,
        "outputs": {"logits": logits, "probs": probs},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference) + "\n")
    print(logits, probs)


if __name__ == "__main__":
    main()
