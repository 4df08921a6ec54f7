"""Face X-ray: predict the blending boundary of a face, trained on online blended reals.

After L. Li, J. Bao, T. Zhang, H. Yang, D. Chen, F. Wen and B. Guo, "Face
X-ray for More General Face Forgery Detection", CVPR 2020. There is no
official code; the blending recipe follows the authors' description and
github.com/AlgoHunt/Face-Xray (``bi_online_generation.py``,
``DeepFakeMask.py``), the network and losses DeepfakeBench's
``training/detectors/facexray_detector.py`` (config
``training/config/detector/facexray.yaml``). Most face forgeries blend an
altered face into a background image; the face X-ray ``B = 4 M (1 - M)`` of a
blend with soft mask ``M`` outlines the blending boundary and is zero for a
real image, so a network trained to predict it from blended real faces
detects forgeries of unseen methods.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.blending import (
    HULL_KINDS,
    LANDMARKS_OK,
    alpha_blend,
    blending_boundary,
    color_transfer_mean,
    ellipse_mask,
    feather_weights,
    gaussian_blur,
    grid_deform,
    hull_mask,
    image_tensor,
    jpeg,
    paired_inputs,
    random_erode_dilate,
    read_landmarks,
    resize,
    rng_from_python,
    sample_source_augment,
    scale_landmarks,
    similarity_matrix,
    source_augment,
    to_uint8,
    warn_landmark_status,
    warp_affine,
    weighted_bce,
)
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's facexray.yaml: 256 x 256 (``cv2.resize``, bicubic), mean = std = 0.5
DEFAULT_PREPROCESSING: dict[str, Any] = dict(DEEPFAKEBENCH_FACE_PREPROCESSING)
#: ``bce``: the paper's cross-entropy on a sigmoid map; ``mse``: DeepfakeBench's squared error
BOUNDARY_LOSSES = ("bce", "mse")
#: what to do with fake training records (the paper's main setting uses reals only)
FAKE_RECORDS = ("ignore", "include")
#: HRNet's classification head (``incre_modules`` ... ``fc``): in DeepfakeBench's
#: checkpoints (its ``cls_hrnet`` builds it) but never called by Face X-ray
UNUSED_HRNET_HEAD = (
    "backbone.incre_modules.",
    "backbone.downsamp_modules.",
    "backbone.final_layer.",
    "backbone.fc.",
    "backbone.classifier.",
)
#: AlgoHunt's working size: faces at 317 px, blended at a random 128-317 px
BLEND_BASE, BLEND_MIN, AUG_MIN = 317, 128, 64


# -- online blending ------------------------------------------------------------------
@dataclass
class PoolEntry:
    image: np.ndarray
    landmarks: np.ndarray | None
    source: str


class FacePool:
    """Recent real faces seen by this process (each data-loader worker keeps its own).

    The paper blends a real face with the real face of nearest landmarks among
    others (AlgoHunt: the least total landmark distance among 5,000 random
    frames of other videos). A pool of the last ``size`` reals is what a
    transform can search without a precomputed index.
    """

    def __init__(self, size: int) -> None:
        self.entries: deque[PoolEntry] = deque(maxlen=max(int(size), 1))

    def add(self, image: np.ndarray, landmarks: np.ndarray | None, source: str) -> None:
        self.entries.append(PoolEntry(image, landmarks, source))

    def clear(self) -> None:
        self.entries.clear()

    def nearest(
        self, landmarks: np.ndarray | None, source: str, rng: np.random.Generator
    ) -> PoolEntry | None:
        """The entry of another source with the nearest landmarks (any one without landmarks)."""
        others = [e for e in self.entries if e.source != source]
        with_landmarks = [e for e in others if e.landmarks is not None]
        if landmarks is not None and with_landmarks:
            distances = [
                np.linalg.norm(e.landmarks[:68] - landmarks[:68], axis=1).sum()
                for e in with_landmarks
            ]
            return with_landmarks[int(np.argmin(distances))]
        return others[int(rng.integers(len(others)))] if others else None


def blend_faces(
    target: np.ndarray,
    target_landmarks: np.ndarray | None,
    source: np.ndarray,
    source_landmarks: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """AlgoHunt's ``get_blended_face``: (blended image, soft mask M), both at the target's size.

    1. the source is aligned to the target by the similarity transform between
       their landmarks (DeepfakeBench's 2-D branch; AlgoHunt relies on the
       nearest-landmark choice alone);
    2. both are resized by ``U(128, 317) / 317`` (blending at a random scale);
    3. mask: one of :data:`detectors.layers.blending.HULL_KINDS` from the target's
       landmarks (an ellipse without them), a random lattice deformation
       (:func:`~detectors.layers.blending.grid_deform`), a random erosion or dilation;
    4. the source's mean colour inside the mask is matched to the target's;
    5. feathered alpha blend: ``M`` = distance into the mask's hull over 20 %
       of the face size, clipped to 1 (:func:`~detectors.layers.blending.feather_weights`);
    6. image and ``M`` are resized back.
    """
    h, w = target.shape[:2]
    if target_landmarks is not None and source_landmarks is not None:
        matrix = similarity_matrix(source_landmarks[:68], target_landmarks[:68])
        source = warp_affine(source, matrix, (h, w))
    elif source.shape[:2] != (h, w):
        source = to_uint8(resize(source, (h, w)))
    factor = rng.uniform(BLEND_MIN / BLEND_BASE, 1.0)
    small = (max(round(h * factor), 16), max(round(w * factor), 16))
    target_s, source_s = to_uint8(resize(target, small)), to_uint8(resize(source, small))
    landmarks_s = (
        None if target_landmarks is None else scale_landmarks(target_landmarks, (h, w), small)
    )
    mask = base = np.zeros(small, dtype=np.float32)
    for _ in range(5):  # AlgoHunt draws again when the deformed mask comes out empty
        if landmarks_s is None:
            base = ellipse_mask(small, rng)
        else:
            base = hull_mask(landmarks_s, small, HULL_KINDS[int(rng.integers(len(HULL_KINDS)))])
        mask = random_erode_dilate(grid_deform(base, rng), rng)
        if mask.any():
            break
    else:
        mask = (base > 0).astype(np.float32)
    source_s = color_transfer_mean(target_s, source_s, mask)
    weights = feather_weights(mask)
    blended = np.clip(alpha_blend(source_s, target_s, weights), 0, 255).astype(np.uint8)
    fake = to_uint8(resize(blended, (h, w)))
    return fake, np.clip(resize(weights, (h, w)), 0.0, 1.0)


def post_augment(
    image: np.ndarray, xray: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """AlgoHunt's ``gen_one_datapoint`` after blending, on reals and fakes alike.

    With probability 0.5 each: down-sample to ``U(64, 317) / 317`` of the size
    (PIL, bilinear or nearest) and back (bilinear); JPEG at quality 60-100; a
    horizontal flip (of the face X-ray too).
    """
    h, w = image.shape[:2]
    if rng.random() < 0.5:
        side = int(rng.integers(AUG_MIN, BLEND_BASE + 1)) / BLEND_BASE
        mode = Image.BILINEAR if rng.random() < 0.5 else Image.NEAREST
        small = (max(round(w * side), 1), max(round(h * side), 1))
        pil = Image.fromarray(image).resize(small, mode).resize((w, h), Image.BILINEAR)
        image = np.asarray(pil).copy()
    if rng.random() < 0.5:
        image = jpeg(image, int(rng.integers(60, 101)))
    if rng.random() < 0.5:
        image = image[:, ::-1].copy()
        xray = None if xray is None else xray[:, ::-1].copy()
    return image, xray


def mask_boundary(path: str | Path, size: int) -> np.ndarray:
    """The face X-ray of a manipulation mask file: 3x3 Gaussian blur, then ``4 M (1 - M)``.

    As DeepfakeBench's ``get_boundary`` for a (H, W) mask in 0-255.
    """
    with Image.open(path) as img:
        mask = np.asarray(img.convert("L"), dtype=np.float64)
    mask = resize(mask, (size, size)) / 255.0
    return np.clip(blending_boundary(np.clip(gaussian_blur(mask, 3), 0, 1)), 0, 1).astype(
        np.float32
    )


# -- the network ----------------------------------------------------------------------
def build_hrnet(name: str, pretrained_file: str | None) -> nn.Module:
    """timm's HRNet without its classification head: stem and four stages.

    timm's ``hrnet_w48`` has the module names and shapes of the official
    HRNet-Image-Classification ``cls_hrnet`` (DeepfakeBench's copy) up to the
    head, so ``hrnetv2_w48_imagenet_pretrained.pth`` loads once its head is dropped.
    """
    import timm

    if not name.startswith("hrnet_"):
        raise UserError(
            f"detector.backbone must be a timm HRNet (hrnet_w48, hrnet_w18 ...), not {name!r}"
        )
    try:
        model = timm.create_model(name, pretrained=False, head="none")
    except RuntimeError as exc:
        raise UserError(f"detector.backbone {name!r} is not a timm HRNet ({exc})") from None
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"detector.pretrained_file {path} does not exist; pass the ImageNet {name} state "
                "dict (hrnetv2_w48_imagenet_pretrained.pth or timm's) or set detector.pretrained_file=null"
            )
        head = tuple(prefix[len("backbone.") :] for prefix in UNUSED_HRNET_HEAD)
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(head)}
        load_state_dict_strict(model, state, f"ImageNet {name} file {path}")
    return model


class FaceXray(Detector):
    """HRNet features at 1/4 resolution -> face X-ray map -> classifier on the map.

    Architecture (DeepfakeBench's ``FaceXrayDetector``, module names kept so
    its checkpoints load): ``backbone`` HRNet-W48 stem and stages; the four
    branch outputs bilinearly up-sampled to the 1/4-resolution branch and
    concatenated (720 channels, the paper's "all four resolutions at 64 x 64");
    ``post_process`` conv 3x3 720->256, BN, ReLU, conv 3x3 256->128, BN, ReLU,
    conv 1x1 128->1, bilinear up-sampling to the input size
    (``align_corners=True``): the face X-ray logits; ``fc`` on the map
    average-pooled to 128 x 128 (half the input size): Linear 16384->1024, BN,
    ReLU, 1024->128, BN, ReLU, 128->1. ``forward`` returns ``logits`` and ``xray`` (B, 1, H, W) in
    [0, 1] for heatmaps (the sigmoid of the map; clamped raw values for
    ``boundary_loss="mse"``), plus ``xray_raw``.

    Reference defaults:

    * paper (as it describes them; no official code): HRNet, four resolutions
      concatenated at 64 x 64, 1x1 conv to one channel, bilinear up-sampling
      to 256 x 256, sigmoid; loss ``L = L_c + lambda * L_b`` with ``L_b`` the
      pixel-wise cross-entropy to the face X-ray and lambda = 100; training
      data: blended images made online from real FF++ faces (nearest-landmark
      partner from another video, landmark hull mask, random deformation,
      colour correction, soft-mask blend), reals with an all-zero X-ray;
    * AlgoHunt's generator: faces at 317 px (crop ``[60:317, 30:287]``),
      blended at a random 128-317 px, then random down-sampling (p 0.5),
      JPEG 60-100 (p 0.5) and flip (p 0.5), half reals, half fakes;
    * DeepfakeBench (facexray.yaml, ``ff_blend.py``): HRNetV2-W48 ImageNet
      init; 256 px, mean = std = 0.5; each real yields a (fake, real) pair;
      2-class cross-entropy + 1000 x MSE between the raw map and the X-ray;
      Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 5e-4; batch 16
      (pairs, so 32 images); 10 epochs; no scheduler. Its test input
      (``abstract_dataset.py`` ``load_rgb``) is the face crop resized to 256 px
      with ``cv2.resize`` ``INTER_CUBIC``; a DeepfakeBench file keeps the
      detector on it (a preprocessing the user set still wins, with a warning).
      Checked against DeepfakeBench's own ``FaceXrayDetector`` and test input
      (``tests/official/deepfakebench_facexray.json``, in float64: random
      weights give logits near 100).

    Here: one fake logit (``z1 - z0`` of a 2-class head; DeepfakeBench's
    weights are converted exactly) and the paper's loss: binary cross-entropy
    + ``boundary_weight`` (100) x the pixel-averaged cross-entropy of the
    sigmoid map (``boundary_loss="mse"``, ``boundary_weight=1000`` for
    DeepfakeBench's); DeepfakeBench's Adam; each real record yields a (real,
    blended) pair in the batch (keys ``image``/``image_blended``, targets
    ``xray``/``xray_blended``), the partner coming from :class:`FacePool`.

    Where this differs, and why:

    * the partner is the nearest-landmark real among the last ``pool_size``
      reals this process has seen (from other videos: ``record.video``, or the
      path), not among 5,000 random frames of the whole set: the transform
      works sample by sample without a precomputed index. The first real of
      an epoch, whose pool is empty, is blended with a colour/frequency-
      augmented copy of itself (SBI's recipe: a blend of one face, still with
      a blending boundary);
    * the partner is aligned to the target by a landmark similarity transform
      (DeepfakeBench; AlgoHunt blends unaligned nearest neighbours);
    * the lattice deformation interpolates its offsets bilinearly rather than
      piecewise-affinely (:func:`detectors.layers.blending.grid_deform`);
    * faces are the data source's crops resized to 256 px, not AlgoHunt's fixed
      317 px crop; records without landmarks blend inside a jittered ellipse
      (one warning);
    * fake records: ``fake_records="ignore"`` (default) gives them zero weight;
      ``"include"`` trains on them as fakes, with an X-ray target from
      ``record.extra["mask"]`` when there is one (blurred, ``4 M (1 - M)``),
      else with the classification loss only;
    * the boundary loss is averaged over pixels (the paper writes a sum).

    Args:
        backbone: a timm HRNet name (``hrnet_w48``: DeepfakeBench's HRNetV2-W48;
            ``hrnet_w18``, ``hrnet_w18_small`` for smaller runs).
        pretrained_file: local ImageNet HRNet weights (classification head dropped).
        boundary_loss, boundary_weight: the X-ray loss (:data:`BOUNDARY_LOSSES`) and lambda.
        pool_size: reals kept per process to pick blending partners from.
        fake_records: :data:`FAKE_RECORDS`.
        preprocessing: fields over :data:`DEFAULT_PREPROCESSING`; faces are resized to a
            ``size`` x ``size`` square (with ``interpolation``) in training and test.
        optimizer, scheduler: see :class:`Detector`; default DeepfakeBench's Adam.
    """

    def __init__(
        self,
        backbone: str = "hrnet_w48",
        pretrained_file: str | None = None,
        boundary_loss: str = "bce",
        boundary_weight: float = 100.0,
        pool_size: int = 128,
        fake_records: str = "ignore",
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if boundary_loss not in BOUNDARY_LOSSES:
            raise UserError(
                f"detector.boundary_loss must be one of {', '.join(BOUNDARY_LOSSES)}, not {boundary_loss!r}"
            )
        if fake_records not in FAKE_RECORDS:
            raise UserError(
                f"detector.fake_records must be one of {', '.join(FAKE_RECORDS)}, not {fake_records!r}"
            )
        self.boundary_loss, self.boundary_weight = boundary_loss, float(boundary_weight)
        self.fake_records = fake_records
        self.backbone = build_hrnet(backbone, pretrained_file)
        channels = sum(info["num_chs"] for info in self.backbone.feature_info[1:])
        self.post_process = nn.Sequential(
            nn.Conv2d(channels, 256, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 128, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 1, kernel_size=1, stride=1, padding=0),
        )
        # DeepfakeBench pools the 256 x 256 map to 128 x 128: half the input size
        self.map_size = max(self.preprocessing.size // 2, 1)
        self.fc = nn.Sequential(
            nn.Linear(self.map_size * self.map_size, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(),
            nn.Linear(1024, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 1),
        )
        self.pool = FacePool(pool_size)

    # -- data ---------------------------------------------------------------------
    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        p = self.preprocessing
        return image_tensor(image, p.size, p.mean, p.std)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """Test: the face at 256 px. Training: a (real, blended) pair and their X-ray targets.

        Training keys: ``image``, ``image_blended``, ``xray`` and
        ``xray_blended`` (1, S, S) targets, ``weight_image``,
        ``weight_blended`` (classification and X-ray weights of each) and
        ``weight_xray`` (the X-ray weight of ``image``), ``landmarks_status``.
        """
        size = self.preprocessing.size
        square = dataclasses.replace(
            self.preprocessing, resize="square", resize_to=size, crop="none"
        )
        if not train:
            return {"image": square(sample["image"], train=False)}
        rng = rng_from_python()
        record = sample.get("record")
        label = int(sample.get("label", 0))
        pil = sample["image"].convert("RGB")
        original_size = (pil.height, pil.width)
        # the test-time resize (bicubic, as DeepfakeBench's cv2.resize), then blend at 256 px
        image = np.asarray(square.resize_image(pil)).copy()
        zeros = torch.zeros(1, size, size)
        if label != 0:
            return self._fake_record(image, record, rng, zeros)
        landmarks, status = read_landmarks(record)
        if landmarks is not None:
            landmarks = scale_landmarks(landmarks, original_size, (size, size))
        source_id = str(getattr(record, "video", None) or getattr(record, "path", ""))
        partner = self.pool.nearest(landmarks, source_id, rng)
        if partner is None:  # empty pool: blend the face with an altered copy of itself
            source, source_landmarks = source_augment(image, sample_source_augment(rng)), landmarks
        else:
            source, source_landmarks = partner.image, partner.landmarks
        fake, mask = blend_faces(image, landmarks, source, source_landmarks, rng)
        self.pool.add(image, landmarks, source_id)
        fake, xray = post_augment(fake, blending_boundary(mask), rng)
        real, _ = post_augment(image, None, rng)
        return {
            "image": self._tensor(real),
            "image_blended": self._tensor(fake),
            "xray": zeros,
            "xray_blended": torch.from_numpy(np.ascontiguousarray(xray, dtype=np.float32))[None],
            "weight_image": torch.tensor(1.0),
            "weight_blended": torch.tensor(1.0),
            "weight_xray": torch.tensor(1.0),
            "landmarks_status": torch.tensor(status),
        }

    def _fake_record(
        self, image: np.ndarray, record: Any, rng: np.random.Generator, zeros: torch.Tensor
    ) -> dict[str, Any]:
        include = self.fake_records == "include"
        extra = getattr(record, "extra", None) or {}
        xray, has_mask = zeros, include and extra.get("mask") is not None
        if has_mask:
            boundary = mask_boundary(extra["mask"], image.shape[0])
            image, boundary = post_augment(image, boundary, rng)
            xray = torch.from_numpy(np.ascontiguousarray(boundary))[None]
        elif include:
            image, _ = post_augment(image, None, rng)
        x = self._tensor(image)
        return {
            "image": x,
            "image_blended": x.clone(),
            "xray": xray,
            "xray_blended": zeros,
            "weight_image": torch.tensor(1.0 if include else 0.0),
            "weight_blended": torch.tensor(0.0),
            "weight_xray": torch.tensor(1.0 if has_mask else 0.0),
            "landmarks_status": torch.tensor(LANDMARKS_OK),
        }

    # -- model --------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The four HRNet branches at the first branch's (1/4) resolution, concatenated."""
        b = self.backbone
        x = b.act1(b.bn1(b.conv1(x)))
        x = b.act2(b.bn2(b.conv2(x)))
        branches = b.stages(x)
        size = branches[0].shape[-2:]
        up = [
            F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in branches[1:]
        ]
        return torch.cat([branches[0], *up], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        raw = self.post_process(self.features(x))
        raw = F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=True)
        logits = self.fc(F.adaptive_avg_pool2d(raw, self.map_size).flatten(1)).squeeze(1)
        xray = torch.sigmoid(raw) if self.boundary_loss == "bce" else raw.clamp(0.0, 1.0)
        return {"logits": logits, "xray": xray, "xray_raw": raw}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Classification BCE + ``boundary_weight`` x the X-ray loss, over reals and blends."""
        warn_landmark_status(
            batch.get("landmarks_status"),
            "Face X-ray",
            "their masks are jittered ellipses and their partners random",
        )
        images, targets, weights = paired_inputs(batch)
        out = self({"image": images})
        loss_cls = weighted_bce(out["logits"], targets, weights)
        target = torch.cat([batch["xray"], batch["xray_blended"]]).float()
        raw = out["xray_raw"].float()
        if self.boundary_loss == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(raw, target, reduction="none")
        else:
            per_pixel = (raw - target) ** 2
        w = torch.cat([batch["weight_xray"], batch["weight_blended"]]).float()
        loss_xray = (per_pixel.flatten(1).mean(1) * w).sum() / w.sum().clamp_min(1.0)
        loss = loss_cls + self.boundary_weight * loss_xray
        return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_xray": loss_xray.detach()}

    def on_train_epoch_end(self) -> None:
        self.pool.clear()  # every epoch starts from an empty pool (exact resumption)

    def load_weights(self, path: str | Path) -> None:
        """Load DeepfakeBench Face X-ray weights or a deepsift state dict, strictly.

        DeepfakeBench's checkpoints carry HRNet's unused classification head
        (:data:`UNUSED_HRNET_HEAD`, dropped and logged) and a 2-class last
        layer ``fc.6`` (converted to one logit, ``w1 - w0``, ``b1 - b0``).
        """
        state = dict(read_state_dict(path))
        dropped = [k for k in state if k.startswith(UNUSED_HRNET_HEAD)]
        for key in dropped:
            del state[key]
        if dropped:
            log.info(
                "Face X-ray: ignored %d keys of HRNet's unused classification head", len(dropped)
            )
        two_class = False
        for key in ("fc.6.weight", "fc.6.bias"):
            value = state.get(key)
            if torch.is_tensor(value) and value.shape[0] == 2:
                state[key] = (value[1] - value[0]).unsqueeze(0)
                two_class = True
        load_state_dict_strict(self, state, f"weights file {path}")
        if dropped or two_class:  # DeepfakeBench's layout: its test input (a user's setting wins)
            self.use_protocol(
                "DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING
            )
