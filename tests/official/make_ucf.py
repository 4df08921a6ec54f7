"""Make the UCF reference from DeepfakeBench's own code (not run by the tests).

``deepfakebench_ucf`` (``ucf_best.pth``): github.com/SCLBD/DeepfakeBench at
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04. Code that runs: ``training/detectors/
ucf_detector.py`` (``UCFDetector`` with ``config/detector/ucf.yaml``: two
``networks/xception.py`` Xceptions in ``adjust_channel`` mode, ``Conditional_UNet``,
``Head``, ``Conv2d1x1``), its losses ``loss/cross_entropy_loss.py``,
``loss/contrastive_regularization.py``, ``loss/l1_loss.py``, and the test input of
``dataset/abstract_dataset.py``; the registries, the stand-in ImageNet file and the
save / load are those of :mod:`tests.official.make_deepfakebench_f3net_srm_recce_xray`
(loaded by file; see there).

``outputs``: ``forward(..., inference=True)`` of the seeded weights saved and reloaded
strictly, ``logit = cls[:, 1] - cls[:, 0]``. ``train_losses``: DeepfakeBench's
``get_train_losses`` of ``forward(..., inference=False)`` in eval mode (dropout off,
BatchNorm running statistics, so that it is deterministic) on the six pictures taken as
three reals then three fakes (``label``, ``label_spe`` below), with ``random.seed(s)``
before the forward pass (its fingerprint shuffle and the contrastive loss's shuffles
draw from Python's ``random``), for the seeds in ``TRAIN_SEEDS``. ``parameters``: the
number of parameters of DeepfakeBench's ``UCFDetector``.

Usage (a scratch copy of DeepfakeBench and a ``pip --target`` folder outside the
project)::

    PYTHONPATH=<site with albumentations==1.1.0, qudida, lmdb> \\
        python tests/official/make_ucf.py --repo <DeepfakeBench>
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

HERE = Path(__file__).resolve().parent
LABEL = [0, 0, 0, 1, 1, 1]
LABEL_SPE = [0, 0, 0, 1, 3, 1]
TRAIN_SEEDS = [0, 1, 2]


def _local(name: str):
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_official(model: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype):
    """``forward(..., inference=True)``: the logit ``cls[:, 1] - cls[:, 0]`` and the score
    ``softmax(cls)[:, 1]`` (what ``UCFDetector`` appends to ``self.prob``)."""
    model = model.to(dtype).eval()
    with torch.no_grad():
        pred = model({"image": inputs.to(dtype), "label": torch.zeros(len(inputs))}, inference=True)
    cls = pred["cls"].double()
    return (cls[:, 1] - cls[:, 0]).tolist(), torch.softmax(cls, dim=1)[:, 1].tolist()


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
    for module in ("loss.contrastive_regularization", "loss.l1_loss"):
        importlib.import_module(module)
    name = "deepfakebench_ucf"
    base.FORMATS[name] = {
        "detector": "ucf",
        "overrides": {},
        "config": "ucf.yaml",
        "module": "ucf_detector",
        "filename": "ucf_best.pth",
        "files": [
            "training/detectors/ucf_detector.py",
            "training/config/detector/ucf.yaml",
            "training/loss/contrastive_regularization.py",
            "training/loss/l1_loss.py",
            "training/loss/cross_entropy_loss.py",
        ],
    }
    base.run_official = run_official  # UCF's inference pred_dict has no 'prob'
    reference = base.make(name, root, "float32")
    # random Xceptions react little to their input (the six logits span ~0.02): the
    # Xception family's 1e-4 (float32 vs float64 of their code: 1.9e-7)
    reference["tolerance"] = {"logit": 1e-4, "prob": 1e-4}
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        model = base.build(base.FORMATS[name], root, tmp)
        path = weights.write_official_file(reference, tmp / "ucf_best.pth")
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
        model.eval()
        inputs = base.official_inputs(root, pictures.reference_images(0), tmp)
    reference["parameters"] = sum(p.numel() for p in model.parameters())
    data = {
        "image": inputs,
        "label": torch.tensor(LABEL),
        "label_spe": torch.tensor(LABEL_SPE),
    }
    reference["train_batch"] = {"label": LABEL, "label_spe": LABEL_SPE}
    losses = {}
    for seed in TRAIN_SEEDS:
        random.seed(seed)
        with torch.no_grad():
            pred = model(data, inference=False)
            out = model.get_losses(data, pred)
        losses[str(seed)] = {k: float(v) for k, v in out.items()}
        print(seed, losses[str(seed)])
    reference["train_losses"] = losses
    (HERE / f"{name}.json").write_text(base.dumps(reference))
    print(reference["outputs"], reference["parameters"])


if __name__ == "__main__":
    main()
