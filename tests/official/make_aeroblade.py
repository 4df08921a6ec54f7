"""Make ``aeroblade/aeroblade_official.json``: AEROBLADE's own pipeline on seeded weights.

Reference: github.com/jonasricker/aeroblade (the official code of Ricker, Lukovnikov
and Fischer, CVPR 2024), commit ``50fc2b22c929fdc481757adc4bc81bf98d36f9fc``; what
runs is their ``high_level_funcs.compute_distances`` (as ``scripts/run_aeroblade.py``
calls it: transform ``clean``, ``seed=1``, ``batch_size=1``) with everything under it:
``data.ImageFolder`` (``ToImage`` + ``ToDtype(float32, scale=True)``),
``image.compute_reconstructions`` (``* 2 - 1``, ``retrieve_latents(ae.encode(x),
generator)`` with one ``torch.Generator().manual_seed(1)`` per dataset and autoencoder,
``decode``, ``(x / 2 + 0.5).clamp(0, 1)``, ``to_pil_image(...).save(png)``, the PNGs read
back by ``ImageFolder``), ``distances.LPIPS`` / ``_PatchedLPIPS`` / ``_compute_lpips``
(the ``lpips`` package's LPIPS-vgg with ``spatial=True``, per-layer maps unupsampled,
stored as float16, ``-mean``), and the maximum over the autoencoders.

What is replaced, and why (nothing numerical):

* ``AutoPipelineForImage2Image.from_pretrained(repo_id, torch_dtype=float16,
  variant="fp16")`` would need a whole Stable Diffusion pipeline; it is given an object
  with just the pipeline's ``vae``, read with the same call
  (``AutoencoderKL.from_pretrained(repo_id, subfolder="vae", torch_dtype=float16,
  variant="fp16", use_safetensors=True)``) and ``upcast_vae()`` (``vae.to(float32)``,
  what the SD pipelines do); ``enable_model_cpu_offload`` is a no-op on the CPU.
* ``torch.compile`` is the identity (no compiler here; it does not change the maths).
* ``aeroblade.inversion`` (BLIP/CLIP-Interrogator, not used by this path) and ``pyiqa``
  (other metrics) are empty stand-ins, so the modules import.
* LPIPS: the ``lpips`` 0.1.4 wheel from PyPI (``--lpips``: a folder holding its
  unpacked ``lpips`` package), copied into the scratch folder with its
  ``weights/v0.1/vgg.pth`` replaced by the seeded linear layers (same keys, same
  container; their absolute values, as LPIPS's trained weights are non-negative), and torchvision's ``vgg16(pretrained=True)`` (a download) reading the
  seeded ``vgg16-397923af.pth``-layout file (``features.*``) instead.

Autoencoders: two tiny ``AutoencoderKL`` (the config below), seeded, written with
``save_pretrained(variant="fp16")`` as float16 safetensors under ``<name>/vae``, and a
tiny ``VQModel`` (Kandinsky 2.1's kind) under ``kandinsky-2-tiny/movq`` in float32, which
their code reads (``"kandinsky-2"`` in the name) without a variant, in float16, and runs
in float16 (``pipe.movq``, no ``upcast_vae``; ``VQModel.decode(force_not_quantize=True)``).
Kandinsky's pipeline stand-in has ``movq`` and no ``vae``.
Pictures (``tests/official/images.reference_image``): three PNGs passed as separate
files (each a dataset of its own, so each starts the posterior noise from seed 1) and a
folder of three same-size PNGs (one dataset: the noise runs on from image to image).
Outputs: the authors' final distances (``-`` their stored ``-LPIPS``, float16-rounded
maps) and the same LPIPS of their ``_PatchedLPIPS`` on their own PNGs averaged in
float32 (``distances_float32``). Distances ``lpips_vgg_2`` (the paper's) and
``lpips_vgg_0`` (all layers). Float32 throughout.

    python -m tests.official.make_aeroblade --repo /path/to/aeroblade \\
        --lpips /path/to/unpacked/lpips-0.1.4-wheel
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
from PIL import Image

from tests.official.images import reference_image
from tests.official.weights import HERE, key_spec, seeded_state_dict

NAME = "aeroblade_official"
OUT = HERE / "aeroblade" / f"{NAME}.json"
COMMIT = "50fc2b22c929fdc481757adc4bc81bf98d36f9fc"
#: a tiny AutoencoderKL (SD's has block_out_channels (128, 256, 512, 512), 2 layers/block)
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}
#: a tiny VQModel like Kandinsky 2.1's movq (spatial norm in the decoder)
VQ_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "num_vq_embeddings": 32,
    "vq_embed_dim": 4,
    "sample_size": 32,
    "norm_type": "spatial",
}
#: folder name -> seed and kind; "kandinsky-2" in the name makes their code read it as
#: Kandinsky (no fp16 variant, the movq kept in float16)
AUTOENCODERS = {
    "vae_a": {"seed": 11, "kind": "kl"},
    "vae_b": {"seed": 12, "kind": "kl"},
    "kandinsky-2-tiny": {"seed": 13, "kind": "vq"},
}
VGG_SEED, LINS_SEED = 21, 22
#: separate files (name, width, height, picture seed) and one folder of same-size pictures
FILES = [("p0", 64, 48, 100), ("p1", 48, 64, 101), ("p2", 56, 56, 102)]
FOLDER = [("f0", 64, 48, 200), ("f1", 64, 48, 201), ("f2", 64, 48, 202)]
METRICS = ["lpips_vgg_2", "lpips_vgg_0"]


def vae_spec() -> list:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return key_spec(AutoencoderKL(**VAE_CONFIG).state_dict())


def vq_spec() -> list:
    from diffusers import VQModel

    with torch.device("meta"):
        return key_spec(VQModel(**VQ_CONFIG).state_dict())


def write_movq(folder: Path, seed: int) -> Path:
    """``<folder>/movq``: the seeded tiny VQModel in float32 (Kandinsky ships no fp16 variant)."""
    from diffusers import VQModel

    movq = VQModel(**VQ_CONFIG)
    movq.load_state_dict(seeded_state_dict(vq_spec(), seed), strict=True)
    movq.save_pretrained(folder / "movq", safe_serialization=True)
    return folder


def vgg_spec() -> list:
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.vgg16().features
    return [[f"features.{k}", s, d] for k, s, d in key_spec(features.state_dict())]


def lins_spec() -> list:
    return [
        [f"lin{k}.model.1.weight", [1, c, 1, 1], "float32"]
        for k, c in enumerate((64, 128, 256, 512, 512))
    ]


def write_vae(folder: Path, seed: int) -> Path:
    """``<folder>/vae``: the seeded tiny VAE as fp16 safetensors (``variant="fp16"``)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CONFIG)
    vae.load_state_dict(seeded_state_dict(vae_spec(), seed), strict=True)
    vae.half().save_pretrained(folder / "vae", variant="fp16", safe_serialization=True)
    return folder


def write_pictures(root: Path) -> tuple[list[Path], Path]:
    files = []
    for name, w, h, seed in FILES:
        path = root / "files" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(reference_image(w, h, seed)).save(path)
        files.append(path)
    folder = root / "folder"
    folder.mkdir()
    for name, w, h, seed in FOLDER:
        Image.fromarray(reference_image(w, h, seed)).save(folder / f"{name}.png")
    return files, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a checkout of COMMIT")
    parser.add_argument("--lpips", type=Path, required=True, help="folder with the lpips package")
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="ref_aeroblade_"))
    site = scratch / "site"
    shutil.copytree(args.lpips.resolve() / "lpips", site / "lpips")
    lins = {
        k: v.abs() for k, v in seeded_state_dict(lins_spec(), LINS_SEED).items()
    }  # >= 0, as LPIPS's
    torch.save(lins, site / "lpips" / "weights" / "v0.1" / "vgg.pth")
    vgg_file = scratch / "vgg16-397923af.pth"
    torch.save(seeded_state_dict(vgg_spec(), VGG_SEED), vgg_file)
    sys.path[:0] = [str(site), str(args.repo.resolve() / "src")]

    # stand-ins for what this path does not use (see the docstring)
    sys.modules["pyiqa"] = types.SimpleNamespace(DEFAULT_CONFIGS={})
    sys.modules["aeroblade.inversion"] = types.SimpleNamespace(create_pipeline=None)
    torch.compile = lambda model, *a, **k: model
    import lpips.pretrained_networks as pn
    import torchvision

    def vgg16(pretrained: bool = True, **_: object) -> torch.nn.Module:
        net = torchvision.models.vgg16()
        missing, unexpected = net.load_state_dict(torch.load(vgg_file), strict=False)
        assert not unexpected and all(k.startswith("classifier.") for k in missing)
        return net

    pn.tv = types.SimpleNamespace(vgg16=vgg16)

    import aeroblade.image as aimage
    from aeroblade.high_level_funcs import compute_distances
    from diffusers import AutoencoderKL, VQModel

    class Pipeline:
        @classmethod
        def from_pretrained(
            cls, repo_id: str, torch_dtype: torch.dtype, use_safetensors: bool, variant
        ):
            if "kandinsky-2" in repo_id:  # the Kandinsky img2img pipeline: movq, no upcast
                kandinsky = KandinskyPipeline()
                kandinsky.movq = VQModel.from_pretrained(
                    repo_id,
                    subfolder="movq",
                    torch_dtype=torch_dtype,
                    use_safetensors=use_safetensors,
                    variant=variant,
                )
                return kandinsky
            pipe = cls()
            pipe.vae = AutoencoderKL.from_pretrained(
                repo_id,
                subfolder="vae",
                torch_dtype=torch_dtype,
                use_safetensors=use_safetensors,
                variant=variant,
            )
            return pipe

        def upcast_vae(self) -> None:
            self.vae.to(dtype=torch.float32)

        def enable_model_cpu_offload(self) -> None:
            pass

    class KandinskyPipeline:
        def enable_model_cpu_offload(self) -> None:
            pass

    aimage.AutoPipelineForImage2Image = Pipeline

    repos = [
        str((write_vae if spec["kind"] == "kl" else write_movq)(scratch / name, spec["seed"]))
        for name, spec in AUTOENCODERS.items()
    ]
    files, folder = write_pictures(scratch)
    os.chdir(scratch)  # their joblib cache lands in ./cache
    frame = compute_distances(
        dirs=[*files, folder],
        transforms=["clean"],
        repo_ids=repos,
        distance_metrics=METRICS,
        amount=None,
        reconstruction_root=scratch / "reconstructions",
        seed=1,
        batch_size=1,
        num_workers=0,
    )

    # their LPIPS on their own PNGs, averaged in float32 (before the float16 storage)
    from aeroblade.data import ImageFolder
    from aeroblade.distances import _PatchedLPIPS

    model = _PatchedLPIPS(spatial=True, net="vgg", verbose=False).eval()
    rec_dirs = sorted((scratch / "reconstructions").glob("*/1"))
    by_source: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for rec_dir in rec_dirs:
            config = json.loads((rec_dir.parent / "config.json").read_text())
            repo = Path(config["repo_id"]).name
            for rec in sorted(rec_dir.glob("*.png")):
                source = next(
                    p for p in [*files, *sorted(folder.glob("*.png"))] if p.stem == rec.stem
                )
                a, b = ImageFolder(source)[0][0][None], ImageFolder(rec)[0][0][None]
                total, layers = model(a, b, retPerLayer=True, normalize=True)
                by_source.setdefault(f"{rec.stem}|{repo}", {})["lpips_vgg_0"] = float(total.mean())
                by_source[f"{rec.stem}|{repo}"]["lpips_vgg_2"] = float(layers[1].mean())

    def rows(metric: str) -> dict:
        out: dict[str, dict[str, float]] = {}
        for _, r in frame[frame.distance_metric == metric].iterrows():
            stem = Path(r.file).stem
            repo = "min" if r.repo_id == "max" else Path(r.repo_id).name
            out.setdefault(stem, {})[repo] = -float(r.distance)
        return out

    names = [n for n, *_ in FILES + FOLDER]
    distances = {m: rows(m) for m in METRICS}
    float32 = {
        m: {n: {a: by_source[f"{n}|{a}"][m] for a in AUTOENCODERS} for n in names} for m in METRICS
    }
    reference = {
        "format": "AEROBLADE: diffusers AutoencoderKL folders (fp16 variant) + LPIPS-vgg "
        "(torchvision vgg16-397923af.pth, lpips v0.1 vgg.pth)",
        "detector": "aeroblade",
        "repository": "https://github.com/jonasricker/aeroblade",
        "commit": args.commit,
        "files": [
            "scripts/run_aeroblade.py",
            "src/aeroblade/high_level_funcs.py",
            "src/aeroblade/image.py",
            "src/aeroblade/data.py",
            "src/aeroblade/distances.py",
            "lpips 0.1.4 (PyPI wheel): lpips/lpips.py, lpips/pretrained_networks.py",
        ],
        "preprocessing": "ImageFolder: PIL RGB, ToImage + ToDtype(float32, scale=True); whole image "
        "(no crop, sides divisible by 8); reconstructions to_pil_image -> PNG -> read back",
        "vae_config": VAE_CONFIG,
        "vae_save": "AutoencoderKL(**vae_config), seeded, .half().save_pretrained(<name>/vae, "
        "variant='fp16', safe_serialization=True)",
        "autoencoders": AUTOENCODERS,
        "vae_keys": vae_spec(),
        "vq_config": VQ_CONFIG,
        "vq_save": "VQModel(**vq_config), seeded, .save_pretrained(<name>/movq, safe_serialization=True) "
        "(float32; their pipeline reads it with torch_dtype=float16 and keeps it so)",
        "vq_keys": vq_spec(),
        "vgg": {
            "filename": "vgg16-397923af.pth",
            "save": "torch.save(state_dict)",
            "seed": VGG_SEED,
            "keys": vgg_spec(),
        },
        "lins": {
            "filename": "vgg.pth",
            "save": "torch.save(state_dict)",
            "seed": LINS_SEED,
            "abs": True,
            "keys": lins_spec(),
        },
        "pictures": {"files": FILES, "folder": FOLDER},
        "posterior": "sampled: torch.Generator().manual_seed(1) per dataset and autoencoder, batch_size 1",
        "dtype": "float32",
        "distances": distances,
        "distances_float32": float32,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reference, indent=1) + "\n")
    print(json.dumps(distances, indent=1))
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
