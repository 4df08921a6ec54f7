"""Full-size parity of the DeepfakeBench video transformers, by hand (too slow for the suite).

    python tests/official/full_size_video.py --repo /path/to/DeepfakeBench timesformer videomae xclip

For each name: a subprocess builds DeepfakeBench's full-size detector (as the matching
``make_<name>.py`` does: ``from_pretrained`` replaced by the architecture of the checkpoint
it names), fills it with ``seeded_state_dict`` (seed 7), saves that as ``<name>_best.pth``
and its ``cls`` on ``torch.manual_seed(0); randn(1, T, 3, 224, 224)`` (T: 8 TimeSformer,
16 VideoMAE, 32 X-CLIP = ``xclip.yaml``'s ``clip_size``, four message groups); this process
then loads the file with ``load_detector(name, weights=..., clip_len=T)`` and prints
``max |logit - (cls_1 - cls_0)|``. Two processes, because DeepfakeBench's code needs the
module name ``detectors`` for its registry stub (:mod:`tests.official.deepfakebench_import`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FRAMES = {"timesformer": 8, "videomae": 16, "xclip": 32}
SEED = 7

AUTHORS_SIDE = """
import json, sys, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.official.deepfakebench_import import import_detector
from tests.official.weights import key_spec, seeded_state_dict
name, repo, out, frames = {name!r}, Path({repo!r}), Path({out!r}), {frames}
if name == "timesformer":
    from tests.official.make_timesformer import build
    det = build(import_detector(repo, "timesformer_detector"), {{}})
elif name == "videomae":
    from tests.official.make_videomae import build
    det = build(import_detector(repo, "videomae_detector"), {{"use_mean_pooling": False}})
else:
    from tests.official.make_xclip import build
    det = build(import_detector(repo, "xclip_detector"), {{}})
torch.set_num_threads(1)
state = seeded_state_dict(key_spec(det.state_dict()), seed={seed})
det.load_state_dict(state, strict=True)
torch.save(state, out / f"{{name}}_best.pth")
torch.manual_seed(0)
with torch.no_grad():
    cls = det({{"image": torch.randn(1, frames, 3, 224, 224)}})["cls"]
(out / f"{{name}}.json").write_text(json.dumps(cls.tolist()))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("names", nargs="+", choices=sorted(FRAMES))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from detectors import load_detector

    torch.set_num_threads(1)
    for name in args.names:
        with tempfile.TemporaryDirectory() as tmp:
            code = AUTHORS_SIDE.format(
                root=str(ROOT),
                name=name,
                repo=str(args.repo),
                out=tmp,
                frames=FRAMES[name],
                seed=SEED,
            )
            subprocess.run([sys.executable, "-c", code], check=True)
            cls = torch.tensor(
                json.loads((Path(tmp) / f"{name}.json").read_text()), dtype=torch.float64
            )
            det = load_detector(name, weights=Path(tmp) / f"{name}_best.pth", clip_len=FRAMES[name])
            torch.manual_seed(0)
            x = torch.randn(1, FRAMES[name], 3, 224, 224)
            with torch.no_grad():
                logits = det.eval()({"clip": x})["logits"].double()
            delta = (logits - (cls[:, 1] - cls[:, 0])).abs().max().item()
            print(
                f"{name}: T={FRAMES[name]} max |dlogit| {delta:.2e} (logit {logits[0].item():.6f})"
            )


if __name__ == "__main__":
    main()
