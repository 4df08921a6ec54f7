"""Make the reference of LipForensics (``tests/official/video/lipforensics_ff.json``).

Runs the authors' own ``Lipreading`` (github.com/ahaliassos/LipForensics, commit
d0bf5553bfb9676f1771d590472b26a3a76de894, ``models/spatiotemporal_net.py``,
``models/resnet.py``, ``models/tcn.py``) from a checkout given with ``--repo`` (its
``models`` package is imported from there; nothing of it is copied into deepsift). The
network is ``Lipreading(num_classes=1, relu_type="prelu", hidden_dim=32, tcn_options=...)``
with the authors' ``lrw_resnet18_mstcn.json`` TCN options except ``num_layers`` 2 (the
full ResNet-18 trunk, a test-size MS-TCN). Its state dict (the ``"model"`` entry of
``lipforensics_ff.pth``) gets seeded weights, loaded with ``strict=True``, and the model
runs in eval mode on a seeded (B, 1, T, 88, 88) clip with ``lengths=[T] * B``, as
``evaluate.py`` calls it.

Usage (from the project root)::

    python tests/official/make_lipforensics.py --repo <LipForensics checkout>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.official.weights import key_spec, seeded_state_dict  # noqa: E402

COMMIT = "d0bf5553bfb9676f1771d590472b26a3a76de894"
SEED = 31
CLIP_SEED = 7
SHAPE = [2, 6, 1, 88, 88]  # (B, T, 1, H, W), deepsift's layout
OVERRIDES = {"clip_len": 6, "hidden_dim": 32, "tcn_layers": 2}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo))
    from models.spatiotemporal_net import Lipreading

    options = json.loads((args.repo / "models/configs/lrw_resnet18_mstcn.json").read_text())
    tcn_options = {
        "num_layers": 2,
        "kernel_size": options["tcn_kernel_size"],
        "dropout": options["tcn_dropout"],
        "dwpw": options["tcn_dwpw"],
        "width_mult": options["tcn_width_mult"],
    }
    model = Lipreading(
        hidden_dim=32, num_classes=1, relu_type=options["relu_type"], tcn_options=tcn_options
    )
    spec = key_spec(model.state_dict())
    state = seeded_state_dict(spec, SEED)
    model.load_state_dict(state, strict=True)
    model.eval()
    clip = torch.randn(SHAPE, generator=torch.Generator().manual_seed(CLIP_SEED))
    b, t = SHAPE[:2]
    with torch.no_grad():
        logits = model(clip.transpose(1, 2), lengths=[t] * b)
    reference = {
        "format": "LipForensics (Lipreading ResNet-18 + MS-TCN, FF++)",
        "detector": "lipforensics",
        "overrides": OVERRIDES,
        "repository": "github.com/ahaliassos/LipForensics",
        "commit": COMMIT,
        "file": "models/spatiotemporal_net.py",
        "filename": "lipforensics_ff.pth",
        "container": "model",
        "seed": SEED,
        "clip_seed": CLIP_SEED,
        "clip_shape": SHAPE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "keys": spec,
        "outputs": {"logits": logits[:, 0].tolist()},
    }
    out = HERE / "video" / "lipforensics_ff.json"
    out.write_text(json.dumps(reference) + "\n")
    print(out, reference["outputs"])


if __name__ == "__main__":
    main()
