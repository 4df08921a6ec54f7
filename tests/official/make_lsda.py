"""Make the LSDA references from DeepfakeBench's own code (not run by the tests).

github.com/SCLBD/DeepfakeBench at 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04,
efficientnet-pytorch 0.7.1 (``install.sh``). Code that runs:
``training/detectors/lsda_detector.py`` (``LSDADetector``, ``generator``, ``efficientnet``)
with ``config/detector/lsda.yaml``, ``training/networks/iresnet.py``, and the test input of
``dataset/abstract_dataset.py``; the registries and stubs, the save / load and the input
are those of :mod:`tests.official.make_deepfakebench_f3net_srm_recce_xray` (loaded by
file; see there). ``efficientnet.__init__`` calls ``EfficientNet.from_pretrained`` on
``./training/pretrained/efficientnet-b4-6ed6700e.pth``, which cannot be downloaded here:
a stand-in with ``EfficientNet.from_name('efficientnet-b4')``'s tensors is written there
(every tensor is then replaced by the seeded weights).

* ``deepfakebench_lsda.json`` (``lsda_best.pth``, ``lsda.yaml`` as it is: the
  IResNet-100 real encoder): ``outputs`` of ``forward(..., inference=True)``, ``logit =
  cls[:, 1] - cls[:, 0]``, on the seeded weights saved and reloaded strictly; checked by
  ``tests/test_official_parity.py``.
* ``training/deepfakebench_lsda_efficientnet_real.json`` (``real_encoder:
  efficientnetb4``, the config's other real encoder, 12x cheaper on CPU than the
  IResNet-100 at 256 px): DeepfakeBench's ``get_losses`` of ``forward(...,
  inference=False)`` in eval mode (dropout and drop-connect off, BatchNorm running
  statistics) on the first five pictures as one group (real, DF, F2F, FS, NT), with
  ``random.seed(s)`` and ``torch.manual_seed(s)`` first (the latent augmentation and the
  mixup draw from both), for the seeds in ``TRAIN_SEEDS``; checked by ``tests/test_lsda.py``.

Usage (a scratch copy of DeepfakeBench and a ``pip --target`` folder outside the
project)::

    PYTHONPATH=<site with efficientnet_pytorch==0.7.1, albumentations==1.1.0, qudida, lmdb> \\
        python tests/official/make_lsda.py --repo <DeepfakeBench>
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import random
import tempfile
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
TRAIN_SEEDS = [0, 1]
#: random EfficientNets give every picture nearly the same output without it (see
#: make_efficientnet_b4.EFFICIENTNET_SCALE)
GAINS = {r".*_blocks\.\d+\._bn[01]\.running_var": 0.33}
FILES = [
    "training/detectors/lsda_detector.py",
    "training/config/detector/lsda.yaml",
    "training/networks/iresnet.py",
]


def _local(name: str):
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(root: Path, real_encoder: str | None) -> torch.nn.Module:
    """``LSDADetector(lsda.yaml)``, as ``train.py`` / ``test.py`` build it."""
    from efficientnet_pytorch import EfficientNet

    stand_in = root / "training/pretrained/efficientnet-b4-6ed6700e.pth"
    if not stand_in.exists():
        torch.save(EfficientNet.from_name("efficientnet-b4").state_dict(), stand_in)
    config = yaml.safe_load((root / "training/config/detector/lsda.yaml").read_text())
    config["real_encoder"] = real_encoder
    from detectors import DETECTOR

    importlib.import_module("detectors.lsda_detector")
    return DETECTOR["lsda"](config)


def reference_for(model: torch.nn.Module, base, weights, filename: str, real: str | None):
    reference = {
        "format": "DeepfakeBench LSDADetector (lsda_best.pth)",
        "detector": "lsda",
        "overrides": {} if real is None else {"real_encoder": "efficientnet_b4"},
        "repository": base.REPOSITORY,
        "commit": base.COMMIT,
        "files": FILES + base.COMMON_FILES,
        "packages": {"efficientnet_pytorch": "0.7.1"},
        "preprocessing": base.TEST_INPUT,
        "save": {"container": "state_dict"},
        "filename": filename,
        "seed": 0,
        "images_seed": 0,
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 1e-4},
        "gains": GAINS,
        "keys": weights.key_spec(model.state_dict()),
    }
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a DeepfakeBench checkout")
    args = parser.parse_args()
    root = args.repo.resolve()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    base = _local("make_deepfakebench_f3net_srm_recce_xray")
    weights, pictures = _local("weights"), _local("images")
    os.chdir(root)
    base.import_deepfakebench(root / "training")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        inputs = base.official_inputs(root, pictures.reference_images(0), tmp)
        for real, target in (
            (None, HERE / "deepfakebench_lsda.json"),
            ("efficientnetb4", HERE / "training" / "deepfakebench_lsda_efficientnet_real.json"),
        ):
            model = build(root, real)
            reference = reference_for(model, base, weights, "lsda_best.pth", real)
            reference["parameters"] = sum(p.numel() for p in model.parameters())
            path = weights.write_official_file(reference, tmp / "lsda_best.pth")
            model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
            model.eval()
            with torch.no_grad():
                pred = model({"image": inputs, "label": torch.zeros(len(inputs))}, inference=True)
            cls = pred["cls"].double()
            reference["outputs"] = {
                "logits": (cls[:, 1] - cls[:, 0]).tolist(),
                "probs": pred["prob"].double().tolist(),
            }
            print(real, reference["outputs"]["logits"], reference["parameters"])
            if real is not None:
                group = {"image": inputs[:5][None], "label": torch.arange(5)[None]}
                reference["train_group"] = {"images": [0, 1, 2, 3, 4], "label": [0, 1, 2, 3, 4]}
                losses = {}
                for seed in TRAIN_SEEDS:
                    random.seed(seed)
                    torch.manual_seed(seed)
                    with torch.no_grad():
                        out = model.get_losses(group, model(group, inference=False))
                    losses[str(seed)] = {k: float(v) for k, v in out.items()}
                    print(seed, losses[str(seed)])
                reference["train_losses"] = losses
            target.parent.mkdir(exist_ok=True)
            target.write_text(base.dumps(reference))


if __name__ == "__main__":
    main()
