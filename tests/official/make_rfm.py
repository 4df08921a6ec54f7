"""Make ``rfm/rfm_dfb.json``: DeepfakeBench's RFM erasing step on seeded weights.

Reference: github.com/SCLBD/DeepfakeBench, commit
``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04``: ``training/detectors/rfm_detector.py``
(``RFMDetector``: ``cal_fam``, ``apply_rfm_augmentation``, ``forward``),
``training/networks/xception.py`` and ``training/config/detector/rfm.yaml``, imported
the way ``make_deepfakebench_xception.py`` does (registries, no package ``__init__``).

RFM's test-time network needs no reference of its own: ``rfm.yaml``'s
``backbone_config`` is ``xception.yaml``'s and ``RFMDetector.features``/``classifier``
are ``XceptionDetector``'s, which this script checks on the seeded file (same
outputs from both classes), so ``deepfakebench_xception.json`` covers it. What is
recorded here is the training-time step: for two 256 px pictures (``ToTensor``,
``Normalize(0.5, 0.5)``), with ``random.seed(SEED)`` and ``torch.manual_seed(SEED)``,
the FAM's first points (NumPy ``argsort`` reversed, as theirs) and the output of
``apply_rfm_augmentation``: which pixels it erased (runs of the flattened mask) and
the sums of the output. Twice:

* ``deepfakebench``: their code as it is. Its ``cal_fam`` unpacks ``_, output =
  self.backbone(inputs)``, and their ``Xception.forward`` returns ``(out, x)`` =
  (logits, feature map), so the FAM differentiates ``x[:, 1] - x[:, 0]`` of the last
  feature map, summed, not the logits (rectified: ``classifier`` applies an in-place
  ReLU to it before the pooling);
* ``logit``: the same with that one line reading ``output, _ = ...`` (the paper's FAM,
  ``z1 - z0``), the rest of their code unchanged.

The only change to their code: ``Tensor.cuda`` is the identity (``cal_fam`` calls
``torch.ones(...).cuda()``; this runs on the CPU). Float32.

    python -m tests.official.make_rfm --repo <DeepfakeBench checkout>
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import numpy as np
import torch

from tests.official.images import reference_image
from tests.official.weights import HERE, key_spec, seeded_state_dict

COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
OUT = HERE / "rfm" / "rfm_dfb.json"
WEIGHTS_SEED, SEED = 15, 7
PICTURES = [(256, 256, 300), (256, 256, 301)]
TOP = 8


def pictures() -> torch.Tensor:
    """The two pictures as DeepfakeBench's dataset hands them over: ToTensor, Normalize(0.5, 0.5)."""
    arrays = [reference_image(w, h, s) for w, h, s in PICTURES]
    x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float().div(255) for a in arrays])
    return (x - 0.5) / 0.5


def erased_runs(mask: np.ndarray) -> list[list[int]]:
    """``[[start, length], ...]`` of the erased (0) positions of a flattened (H, W) mask."""
    flat = (mask.reshape(-1) == 0).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    return [[int(a), int(b - a)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import yaml

    from tests.official.make_deepfakebench_xception import _package

    training = args.repo.resolve() / "training"
    sys.path.insert(0, str(training))
    sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=None)  # unused
    import importlib

    registry = importlib.import_module("metrics.registry")
    _package("detectors", training / "detectors").DETECTOR = registry.DETECTOR
    _package("networks", training / "networks").BACKBONE = registry.BACKBONE
    _package("loss", training / "loss").LOSSFUNC = registry.LOSSFUNC
    importlib.import_module("networks.xception")
    importlib.import_module("loss.cross_entropy_loss")
    rfm_module = importlib.import_module("detectors.rfm_detector")
    xception_module = importlib.import_module("detectors.xception_detector")
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU

    config = yaml.safe_load((training / "config" / "detector" / "rfm.yaml").read_text())
    xconfig = yaml.safe_load((training / "config" / "detector" / "xception.yaml").read_text())
    assert config["backbone_config"] == xconfig["backbone_config"]
    with tempfile.TemporaryDirectory() as tmp:
        imagenet = registry.BACKBONE["xception"](config["backbone_config"])
        state = {
            k: v.flatten(1) if "pointwise" in k else v for k, v in imagenet.state_dict().items()
        }
        torch.save(state, Path(tmp) / "imagenet.pth")
        config["pretrained"] = xconfig["pretrained"] = str(Path(tmp) / "imagenet.pth")
        model = rfm_module.RFMDetector(config)
        spec = key_spec(model.state_dict())
        model.load_state_dict(seeded_state_dict(spec, WEIGHTS_SEED), strict=True)
        plain = xception_module.XceptionDetector(xconfig)
        plain.load_state_dict(model.state_dict(), strict=True)

    x = pictures()
    model.eval()
    plain.eval()
    with torch.no_grad():  # the test-time network is XceptionDetector's
        a = model({"image": x.clone()}, inference=True)["cls"]
        b = plain({"image": x.clone()}, inference=True)["cls"]
    assert torch.equal(a, b)

    source = textwrap.dedent(inspect.getsource(rfm_module.RFMDetector.cal_fam))
    assert source.count("_, output = self.backbone(inputs)") == 1
    namespace: dict = {}
    exec(
        source.replace("_, output = self.backbone(inputs)", "output, _ = self.backbone(inputs)"),
        vars(rfm_module),
        namespace,
    )
    paper_cal_fam = namespace["cal_fam"]

    results = {}
    for variant in ("deepfakebench", "logit"):
        if variant == "logit":
            model.cal_fam = types.MethodType(paper_cal_fam, model)
        model.backbone.eval()  # as apply_rfm_augmentation (train mode would move BN statistics)
        fam = model.cal_fam(x.clone())
        top = [
            np.argsort(fam[i].detach().numpy().flatten())[::-1][:TOP].tolist()
            for i in range(len(x))
        ]
        random.seed(SEED)
        torch.manual_seed(SEED)
        model.train()
        out = model.apply_rfm_augmentation(x.clone()).detach()
        mask = (out != x).any(dim=1).logical_not().numpy()
        results[variant] = {
            "fam_top": top,
            "erased": [erased_runs(mask[i]) for i in range(len(x))],
            "erased_pixels": [int((mask[i] == 0).sum()) for i in range(len(x))],
            "sum": [float(out[i].double().sum()) for i in range(len(x))],
            "sum_of_squares": [float(out[i].double().square().sum()) for i in range(len(x))],
        }
        print(variant, results[variant]["erased_pixels"], results[variant]["fam_top"][0][:3])

    reference = {
        "what": "RFM's FAM-guided erasing (training step), DeepfakeBench's RFMDetector",
        "detector": "rfm",
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "commit": args.commit,
        "files": [
            "training/detectors/rfm_detector.py",
            "training/detectors/xception_detector.py",
            "training/networks/xception.py",
            "training/config/detector/rfm.yaml",
            "training/config/detector/xception.yaml",
        ],
        "weights": {
            "filename": "rfm_best.pth",
            "save": {"container": "state_dict"},
            "seed": WEIGHTS_SEED,
            "keys": spec,
        },
        "pictures": PICTURES,
        "input": "ToTensor, Normalize(0.5, 0.5), batch of the two pictures",
        "seed": SEED,
        "seeding": "random.seed(seed); torch.manual_seed(seed); then apply_rfm_augmentation (train mode)",
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
