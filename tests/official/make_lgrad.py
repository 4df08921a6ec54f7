"""Make ``lgrad_stylegan_bedrooms_resnet50.json``: LGrad's own code on seeded weights.

Reference: github.com/chuangchuangtan/LGrad (Tan et al., CVPR 2023), commit
``7cb5973821f9ab56b0dbc3aca50b88c835ebc993``; files run:

* ``img2gad_pytorch/gen_imggrad.py`` (``generate_images``, as
  ``img2gad_pytorch/transform_img2grad.sh`` calls it, batch size 1): the StyleGAN
  discriminator from ``img2gad_pytorch/models/__init__.py`` (``build_model('stylegan',
  'discriminator', resolution=256, label_size=0, image_channels=3)``,
  ``models/stylegan_discriminator.py``), ``model.load_state_dict(torch.load(path),
  strict=True)``; ``Resize((256, 256))`` (PIL bilinear), ``ToTensor``,
  ``Normalize(0.5, 0.5)``; ``autograd.grad(D(x).sum(), x)``; ``normlize_np`` (per image
  minus min, over max, x255); ``cv2.imwrite`` of the float array as an 8-bit PNG. Its
  ``.cuda()`` calls are made no-ops (no GPU here); nothing else is replaced;
* ``CNNDetection/eval_test8gan.py``: ``resnet50(num_classes=1)`` from
  ``CNNDetection/networks/resnet.py``, ``model.load_state_dict(torch.load(path))``, the
  test set of ``CNNDetection/data/datasets.py`` (``binary_dataset`` with ``no_resize``
  and ``no_crop``: ``ImageFolder``, ``ToTensor``, ImageNet ``Normalize``) over the
  gradient PNGs, and ``CNNDetection/validate.py``'s ``model(x).sigmoid()``.

Two files make the detector: the classifier (a plain ResNet-50 state dict, what
``eval_test8gan.py`` loads; the released files' names, on Google Drive, could not be
checked) and ``karras2019stylegan-bedrooms-256x256_discriminator.pth`` (a plain state
dict of genforce's port), which deepsift takes as ``gradient_model.weights`` with
``gradient_model.arch=stylegan``. The discriminator's weights are seeded and scaled by
sqrt(fan_in) (``scale``: its equalised learning rate stores them ~N(0, 1) and
multiplies by sqrt(2 / fan_in) at run time); its buffers keep the model's own
constants (``values``: ``lod`` 0, the ``[1, 2, 1]`` blur kernels). Float32 (the
gradient PNGs are 8-bit: a float64 run would round differently).

    python -m tests.official.make_lgrad --repo /path/to/LGrad  # a checkout of COMMIT
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.make_univfd import dump_reference
from tests.official.weights import HERE, key_spec, write_official_file

NAME = "lgrad_stylegan_bedrooms_resnet50"
COMMIT = "7cb5973821f9ab56b0dbc3aca50b88c835ebc993"
DISCRIMINATOR = "karras2019stylegan-bedrooms-256x256_discriminator.pth"
SEED, DISCRIMINATOR_SEED, IMAGES_SEED = 0, 1, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT, help="the commit checked out in --repo")
    parser.add_argument("--out", type=Path, default=HERE / f"{NAME}.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path[:0] = [str(repo / "img2gad_pytorch"), str(repo / "CNNDetection")]
    torch.set_num_threads(1)
    torch.Tensor.cuda = lambda self, *a, **k: self  # no GPU here: their .cuda() stays on CPU
    torch.nn.Module.cuda = lambda self, *a, **k: self

    import gen_imggrad  # their code
    from data.datasets import binary_dataset
    from models import build_model
    from networks.resnet import resnet50

    shell = build_model(
        gan_type="stylegan", module="discriminator", resolution=256, label_size=0, image_channels=3
    )
    parameters = dict(shell.named_parameters())
    discriminator = {
        "filename": DISCRIMINATOR,
        "save": {"container": "state_dict"},
        "seed": DISCRIMINATOR_SEED,
        "keys": key_spec(shell.state_dict()),
        "gains": {
            re.escape(k): math.sqrt(v[0].numel())
            for k, v in parameters.items()
            if k.endswith("weight")
        },
        "values": {
            k: v[:1].tolist() if v.ndim else float(v)
            for k, v in shell.named_buffers()
            if v.ndim == 0 or bool((v == v[:1]).all())
        },
    }
    assert set(discriminator["values"]) == {k for k, _ in shell.named_buffers()}
    del shell
    classifier = {"save": {"container": "state_dict"}, "seed": SEED}
    classifier["keys"] = key_spec(resnet50(num_classes=1).state_dict())

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        d_file = write_official_file(discriminator, scratch / DISCRIMINATOR)
        c_file = write_official_file(classifier, scratch / "lgrad_classifier.pth")
        images, grads = scratch / "images", scratch / "grad" / "0_real"
        images.mkdir()
        for i, array in enumerate(reference_images(IMAGES_SEED)):
            Image.fromarray(array).save(images / f"{i}.png")
        start = time.time()
        sys.argv = ["gen_imggrad.py", str(images), str(grads), str(d_file), "1"]
        gen_imggrad.generate_images()  # transform_img2grad.sh: batch size 1

        model = resnet50(num_classes=1)  # eval_test8gan.py
        model.load_state_dict(torch.load(c_file, map_location="cpu"))
        model.eval()
        opt = SimpleNamespace(
            isTrain=False, no_crop=True, no_resize=True, no_flip=True, cropSize=224, loadSize=256
        )
        dataset = binary_dataset(opt, str(scratch / "grad"))
        order = [int(Path(path).stem) for path, _ in dataset.samples]
        x = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            out = model(x).flatten()
        logits = [float(out[order.index(i)]) for i in range(len(order))]
        probs = [float(torch.tensor(v).sigmoid()) for v in logits]  # validate.py
        print(f"official run: {time.time() - start:.1f} s", file=sys.stderr)

    reference = {
        "format": "LGrad classifier (ResNet-50) + StyleGAN bedrooms-256 discriminator",
        "detector": "lgrad",
        "overrides": {"gradient_model": {"arch": "stylegan"}},
        "repository": "https://github.com/chuangchuangtan/LGrad",
        "commit": args.commit,
        "files": [
            "img2gad_pytorch/gen_imggrad.py",
            "img2gad_pytorch/transform_img2grad.sh",
            "img2gad_pytorch/models/__init__.py",
            "img2gad_pytorch/models/stylegan_discriminator.py",
            "CNNDetection/eval_test8gan.py",
            "CNNDetection/networks/resnet.py",
            "CNNDetection/data/datasets.py",
            "CNNDetection/validate.py",
        ],
        "preprocessing": "gen_imggrad.py: PIL RGB, Resize((256, 256)) bilinear, ToTensor, "
        "Normalize(0.5, 0.5), gradient of D's score, per-image min-max x255, cv2.imwrite 8-bit "
        "PNG; eval_test8gan.py: the PNG as it is (no resize, no crop), ToTensor, ImageNet "
        "Normalize",
        "save": classifier["save"],
        "filename": "lgrad_classifier.pth",
        "seed": SEED,
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "keys": classifier["keys"],
        "companions": {"gradient_model.weights": discriminator},
        "outputs": {
            "logits": [round(v, 7) for v in logits],
            "probs": [round(v, 7) for v in probs],
        },
    }
    args.out.write_text(dump_reference(reference))
    print(args.out, reference["outputs"])


if __name__ == "__main__":
    main()
