"""The weight files deepsift reads, as data: what each looks like, which detector and
test-time protocol it implies, and where it comes from.

``python -m detectors.inspect FILE`` matches a file against :data:`FORMATS`; each
detector's ``load_weights`` does the loading (and switches to the protocol,
:meth:`detectors.base.Detector.use_protocol`). A format is recognised by the keys of
its state dict once the container (``{'model': ...}``, ``{'net': ...}``, a deepsift
checkpoint) is opened and ``module.`` prefixes removed, or by its file type (Keras
HDF5, a pickled FaceForensics++ model). Several detectors can read one layout
(DeepfakeBench's Xception and CORE share their keys; a CNNDetection ResNet-50 is
LGrad's classifier): inspect lists every candidate, and ``--verify`` loads each.

``sha256``: the checksums the authors published for their released files, where they
published any, and inspect says when a file matches one. Only ClipBased's are known: its
heads are Git LFS objects, and the LFS pointer committed in the repository is the
file's SHA-256 (``oid sha256:``) and size; no other repository below publishes one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

State = Mapping[str, Any]


def _has(*keys: str) -> Callable[[State], bool]:
    return lambda state: all(k in state for k in keys)


def _prefix(prefix: str) -> Callable[[State], bool]:
    return lambda state: any(k.startswith(prefix) for k in state)


def _shape(key: str, index: int, value: int) -> Callable[[State], bool]:
    def check(state: State) -> bool:
        tensor = state.get(key)
        shape = getattr(tensor, "shape", None)
        return shape is not None and len(shape) > index and int(shape[index]) == value

    return check


def _all(*checks: Callable[[State], bool]) -> Callable[[State], bool]:
    return lambda state: all(check(state) for check in checks)


def _any(*checks: Callable[[State], bool]) -> Callable[[State], bool]:
    return lambda state: any(check(state) for check in checks)


def _none(*checks: Callable[[State], bool]) -> Callable[[State], bool]:
    return lambda state: not any(check(state) for check in checks)


@dataclass(frozen=True)
class WeightFormat:
    """One released weight-file layout."""

    name: str
    #: config names of the detectors that read it (first: the usual one)
    detectors: tuple[str, ...]
    #: where the layout and the protocol come from (repository, files)
    source: str
    #: the official test-time input, in words
    protocol: str
    #: ``state dict`` (torch / safetensors), ``keras-h5`` or ``pickled-module``
    kind: str = "state dict"
    #: architecture arguments the file needs (``load_detector(name, weights=..., **overrides)``)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    #: recognises the state dict (kind ``state dict`` only)
    matches: Callable[[State], bool] = field(default=lambda state: False, repr=False)
    #: the file names the authors released
    released: tuple[str, ...] = ()
    #: ``{file name: sha256}`` published by the authors
    sha256: Mapping[str, str] = field(default_factory=dict)


_DFB = "github.com/SCLBD/DeepfakeBench"
_DFB_INPUT = (
    "face crop resized to 256 x 256 with cv2.resize(INTER_CUBIC), ToTensor, "
    "Normalize(0.5, 0.5) (training/dataset/abstract_dataset.py)"
)
_XCEPTION_DFB = _all(
    _shape("backbone.conv1.weight", 1, 3),
    _any(_has("backbone.last_linear.weight"), _has("backbone.last_linear.1.weight")),
)

_EFFORT_INPUT = (
    "face crop resized to 224 x 224 with cv2.resize(INTER_CUBIC), ToTensor, CLIP Normalize "
    "(training/dataset/abstract_dataset.py, resolution 224 in effort.yaml)"
)
_EFFORT_Q = "backbone.encoder.layers.0.self_attn.q_proj."
#: DeepfakeBench's capsule_net and deepsift's capsule_forensics share their keys (#12)
CAPSULE_SHARED_LAYOUT = "DeepfakeBench capsule_net or deepsift capsule_forensics state dict"

FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat(
        "DeepfakeBench Xception / CORE",
        ("xception", "core"),
        f"{_DFB}: training/detectors/xception_detector.py, core_detector.py",
        _DFB_INPUT,
        matches=_XCEPTION_DFB,
        released=("xception_best.pth", "core_best.pth"),
    ),
    WeightFormat(
        "CORE (the authors' checkpoint)",
        ("core",),
        "github.com/niyunsheng/CORE: src/xception.py, src/trainer.py, src/transform.py",
        "transforms.Resize(299) (shorter side, Pillow bilinear; square crops), ToTensor, "
        "Normalize(0.5, 0.5) (get_augs('None', norm='0.5', size=299))",
        matches=_all(
            _has("conv1.weight", "block1.rep.0.conv1.weight", "conv4.pointwise.weight"),
            _shape("fc.weight", 0, 2),
        ),
        released=("epoch_<n>_acc_<acc>_auc_<auc>.pth",),
    ),
    WeightFormat(
        "DeepfakeBench SPSL",
        ("spsl",),
        f"{_DFB}: training/detectors/spsl_detector.py",
        _DFB_INPUT + "; plus the phase-only reconstruction channel",
        matches=_shape("backbone.conv1.weight", 1, 4),
        released=("spsl_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench SRM",
        ("srm",),
        f"{_DFB}: training/detectors/srm_detector.py",
        _DFB_INPUT,
        matches=_prefix("backbone_rgb."),
        released=("srm_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench F3-Net",
        ("f3net",),
        f"{_DFB}: training/detectors/f3net_detector.py",
        _DFB_INPUT,
        overrides={"mode": "fad"},
        matches=_has("FAD_head._DCT_all"),
        released=("f3net_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench EfficientNet-B4",
        ("efficientnet_b4",),
        f"{_DFB}: training/detectors/efficientnetb4_detector.py",
        _DFB_INPUT,
        matches=_has("backbone.efficientnet._conv_stem.weight"),
        released=("effnb4_best.pth",),
    ),
    WeightFormat(
        "icpr2020dfdc EfficientNetB4",
        ("efficientnet_b4",),
        "github.com/polimi-ispl/icpr2020dfdc: architectures/fornet.py, isplutils/utils.py",
        "face_policy 'scale': longest side to 224 (bilinear), zero-padded to 224 x 224, "
        "ImageNet normalisation",
        overrides={"padding": "static_v0.6", "stem_padding": "same"},
        matches=_has("efficientnet._conv_stem.weight"),
        released=("EfficientNetB4_DFDC_bestval-*.pth", "EfficientNetB4_FFPP_bestval-*.pth"),
    ),
    WeightFormat(
        "DeepfakeBench RECCE",
        ("recce",),
        f"{_DFB}: training/detectors/recce_detector.py",
        _DFB_INPUT,
        matches=_prefix("model.encoder."),
        released=("recce_best.pth",),
    ),
    WeightFormat(
        "RECCE (the authors' checkpoint)",
        ("recce",),
        "github.com/VISION-SJTU/RECCE: model/network/Recce.py, inference.py",
        "299 x 299 (albumentations Resize: cv2 INTER_LINEAR), Normalize(0.5, 0.5)",
        matches=_all(_prefix("encoder."), _prefix("decoder6.")),
        released=("best_model_*.bin",),
    ),
    WeightFormat(
        "DeepfakeBench Face X-ray",
        ("face_xray",),
        f"{_DFB}: training/detectors/facexray_detector.py",
        _DFB_INPUT,
        matches=_all(_prefix("backbone.stage4."), _prefix("fc.")),
        released=("facexray_best.pth",),
    ),
    WeightFormat(
        "Self-Blended Images (SBI)",
        ("sbi",),
        "github.com/mapooon/SelfBlendedImages: src/model.py, src/inference/",
        "face crop (margin per crop_face), resized to 380 x 380, [0, 1], no normalisation",
        matches=_has("net._conv_stem.weight"),
        released=("FFraw.tar", "FFc23.tar"),
    ),
    WeightFormat(
        "Capsule-Forensics-v2",
        ("capsule_forensics",),
        "github.com/nii-yamagishilab/Capsule-Forensics-v2: model_big.py, test_binary_*.py",
        "300 x 300 (transforms.Resize), ImageNet normalisation",
        # the official files hold no VGG (torchvision's ImageNet one); with vgg_ext.* it is
        # the DeepfakeBench / deepsift layout (#12 block at the end)
        matches=_all(_has("routing_stats.route_weights"), _none(_prefix("vgg_ext."))),
        released=("capsule_<epoch>.pt",),
    ),
    WeightFormat(
        "CNNDetection ResNet-50 (also an LGrad classifier)",
        ("cnnspot", "lgrad"),
        "github.com/PeterWang512/CNNDetection: networks/resnet.py, demo.py",
        "no resize, CenterCrop 224 (eval.py; --no_crop: whole image), ImageNet normalisation",
        matches=_all(
            _has("layer4.2.conv3.weight"), _shape("fc.weight", 0, 1), _none(_has("conv2.weight"))
        ),
        released=("blur_jpg_prob0.5.pth", "blur_jpg_prob0.1.pth"),
    ),
    WeightFormat(
        "NPR",
        ("npr",),
        "github.com/chuangchuangtan/NPR-DeepfakeDetection: networks/resnet.py, test.py",
        "PIL Resize((256, 256)) bilinear, no crop, ImageNet normalisation (ForenSynths "
        "flags; GANGen-Detection: no resize)",
        matches=_all(_shape("fc1.weight", 0, 1), _prefix("layer2."), _none(_prefix("layer3."))),
        released=("NPR.pth", "model_epoch_last_3090.pth"),
    ),
    WeightFormat(
        "FreqNet",
        ("freqnet",),
        "github.com/chuangchuangtan/FreqNet-DeepfakeDetection: networks/freqnet.py, test.py",
        "PIL Resize((256, 256)) bilinear, no crop, ImageNet normalisation (ForenSynths flags)",
        matches=_has("weight1", "bias1", "fc1.weight"),
        released=("freqnet.pth",),
    ),
    WeightFormat(
        "UnivFD linear head",
        ("univfd",),
        "github.com/Yuheng-Li/UniversalFakeDetect: models/clip_models.py, validate.py",
        "CLIP ViT-L/14 input: 224 centre crop, CLIP normalisation",
        matches=_all(_has("weight", "bias"), _shape("weight", 1, 768)),
        released=("fc_weights.pth",),
    ),
    WeightFormat(
        "ClipBased (Cozzolino et al.) linear head",
        ("clipbased",),
        "github.com/grip-unina/ClipBased-SyntheticImageDetection: networks/, main.py",
        "CLIP ViT-L/14 input: 224 centre crop, CLIP normalisation",
        matches=_any(
            _all(_has("weight", "bias"), _shape("weight", 1, 1024)),
            _all(_has("fc.weight", "fc.bias"), _shape("fc.weight", 1, 1024)),
        ),
        released=("weights.pth",),
        # the Git LFS pointers weights/<model>/weights.pth at commit c76ef7f (sizes 5227
        # and 5155 bytes); the objects themselves are not mirrored
        sha256={
            "weights/clipdet_latent10k/weights.pth": (
                "04b022c6990709acb132337d7e432fc57090cec9db3869577111b031d40c19f9"
            ),
            "weights/clipdet_latent10k_plus/weights.pth": (
                "1c9c9f48a47d975bde67e9924983aa4e4ccda96a15e7e983b6305f0c56d9ee18"
            ),
        },
    ),
    WeightFormat(
        "MesoNet Keras weights",
        ("meso4", "mesoinception4"),
        "github.com/DariusAf/MesoNet: classifiers.py, example.py",
        "256 x 256 face, rescale 1/255",
        kind="keras-h5",
        released=("Meso4_DF.h5", "Meso4_F2F.h5", "MesoInception_DF.h5", "MesoInception_F2F.h5"),
    ),
    WeightFormat(
        "FaceForensics++ Xception (whole pickled TransferModel)",
        ("xception",),
        "github.com/ondyari/FaceForensics: classification/network/models.py, detect_from_video.py",
        "1.3x dlib face box, Resize((299, 299)) (PIL bilinear), Normalize(0.5, 0.5)",
        kind="pickled-module",
        released=("full_c23.p", "full_raw.p", "full_c40.p"),
    ),
    # AI-generated images, foundation-model detectors (#16, aigc-a)
    WeightFormat(
        "RINE (Koutlis & Papadopoulos) trainable parts",
        ("rine",),
        "github.com/mever-team/rine: src/models.py, src/utils.py, ckpt/",
        "CLIP ViT-L/14 input: 224 centre crop without resize, CLIP normalisation",
        matches=_all(
            _has("alpha", "proj1.1.weight", "head.6.weight"), _shape("proj1.1.weight", 1, 1024)
        ),
        released=(
            "model_1class_trainable.pth",
            "model_2class_trainable.pth",
            "model_4class_trainable.pth",
            "model_ldm_trainable.pth",
        ),
    ),
    # -- video detectors (#15, branch video-temporal) --
    WeightFormat(
        "DeepfakeBench TALL",
        ("tall",),
        "github.com/SCLBD/DeepfakeBench: training/detectors/tall_detector.py, config/detector/tall.yaml",
        "4 ImageNet-normalised 224 px face crops tiled 2 x 2, thumbnail resized 448 -> 224 (bilinear)",
        overrides={
            "frame_size": 224,
            "thumbnail_size": 224,
            "frame_pos_embed": True,
            "model_kwargs": {
                "embed_dim": 128,
                "depths": [2, 2, 18, 2],
                "num_heads": [4, 8, 16, 32],
                "window_size": 14,
            },
        },
        matches=_has("model.frame_pos_embed", "model.patch_embed.proj.weight", "model.head.weight"),
        released=("tall_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench STIL",
        ("stil",),
        "github.com/SCLBD/DeepfakeBench: training/detectors/stil_detector.py, config/detector/stil.yaml",
        "8 consecutive 224 px face crops, mean = std = 0.5, per-frame logits averaged",
        matches=_has("model.base_model.layer1.0.tim.conv1.weight", "model.base_model.fc.weight"),
        released=("stil_best.pth",),
    ),
    # -- face-sota (#16): face-forgery detectors ---------------------------------------
    WeightFormat(
        "DeepfakeBench RFM",
        ("rfm",),
        f"{_DFB}: training/detectors/rfm_detector.py",
        _DFB_INPUT + "; the keys are DeepfakeBench Xception's (that entry recognises them)",
        released=("rfm_best.pth",),
    ),
    # -- video detectors, 3D convolutions (issue #15) -----------------------------------
    WeightFormat(
        "DeepfakeBench I3D",
        ("i3d",),
        f"{_DFB}: training/detectors/i3d_detector.py, utils/slowfast/models/",
        "clips of 16 consecutive face frames, each cv2.resize to 224 x 224 (INTER_CUBIC), "
        "Normalize(0.5, 0.5), (B, C, T, H, W)",
        matches=_all(
            _has("resnet.s1.pathway0_stem.conv.weight"),
            _shape("resnet.head.projection.weight", 0, 1),
        ),
        released=("i3d_best.pth",),
    ),
    WeightFormat(
        "SlowFast Kinetics-400 I3D R50 (DeepfakeBench's I3D pretraining)",
        ("i3d",),
        "github.com/facebookresearch/SlowFast (I3D 8x8 R50), loaded by "
        f"{_DFB}: training/detectors/i3d_detector.py as config 'pretrained'",
        "a Kinetics action classifier, not a detector: detector.pretrained_file= for "
        "fine-tuning (400-way head cut to row 0)",
        matches=_any(
            _all(_has("s1.pathway0_stem.conv.weight"), _shape("head.projection.weight", 0, 400)),
            _all(
                _has("resnet.s1.pathway0_stem.conv.weight"),
                _shape("resnet.head.projection.weight", 0, 400),
            ),
        ),
        released=("I3D_8x8_R50.pth",),
    ),
    # -- #16, AI-generated images: CNN / frequency detectors (aigc-b) --------------------------
    WeightFormat(
        "LaDeDa (LaDeDa9)",
        ("ladeda",),
        "github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld: networks/LaDeDa.py, "
        "test.py",
        "PIL Resize((256, 256)) bilinear, no crop, ImageNet normalisation",
        matches=_all(
            _shape("conv1.weight", 2, 1),
            _shape("conv2.weight", 1, 64),
            _has("layer4.2.conv3.weight"),
        ),
        released=("WildRF_LaDeDa.pth", "ForenSynth_LaDeDa.pth"),
    ),
    WeightFormat(
        "SAFE",
        ("safe",),
        "github.com/Ouxiang-Li/SAFE: models/resnet.py, main_finetune.py, utils.py (save_model)",
        "CenterCrop(256) (zero-padded), no resize, ToTensor, no normalisation",
        matches=_all(_shape("fc1.weight", 0, 2), _prefix("layer2."), _none(_prefix("layer3."))),
        released=("checkpoint-best.pth",),
    ),
    WeightFormat(
        "B-Free (Guillaro et al.) timm DINOv2 ViT-B/14 reg4, 504 px grid",
        ("bfree",),
        "github.com/grip-unina/B-Free: code/networks/__init__.py, code/networks/wrapper5crops.py",
        "whole image, no resize, ImageNet normalisation; mean logit of five 504 px crops",
        matches=_all(
            _has("reg_token", "pos_embed", "patch_embed.proj.weight", "head.weight"),
            _shape("patch_embed.proj.weight", 2, 14),
            _shape("head.weight", 0, 1),
        ),
        released=("model_epoch_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench Multi-Attention",
        ("multi_attention",),
        f"{_DFB}: training/detectors/multi_attention_detector.py",
        _DFB_INPUT,
        matches=_has(
            "backbone.efficientnet._conv_stem.weight",
            "attention_generation.conv_extract.weight",
            "texture_enhance.conv0.weight",
            "ensemble_classifier_fc.2.weight",
        ),
        released=("multi_attention_best.pth",),
    ),
    WeightFormat(
        "FTCN + Temporal Transformer (official)",
        ("ftcn",),
        "github.com/yinglinzheng/FTCN: model/classifier/i3d_temporal_var_fix_dropout_tt_cfg.py, "
        "setting/ftcn_tt.yaml",
        "clips of 32 consecutive landmark-aligned face frames, 224 x 224, ImageNet mean/std, "
        "(B, C, T, H, W)",
        matches=_any(
            _has("resnet.head.time_T.cls_token"), _has("module.resnet.head.time_T.cls_token")
        ),
        released=("ftcn_tt.pth",),
    ),
    WeightFormat(
        "AltFreezing I3D8x8 (official)",
        ("altfreezing",),
        "github.com/ZhendongWang6/AltFreezing: model/classifier/i3d_ori.py, setting/i3d_ori.yaml "
        "(model.pth, I3D8x8.state_dict(); the same keys as DeepfakeBench's i3d_best.pth)",
        "clips of 32 consecutive aligned face frames, 224 x 224, ImageNet mean/std, "
        "(B, C, T, H, W)",
        matches=_all(
            _has("resnet.s1.pathway0_stem.conv.weight"),
            _shape("resnet.head.projection.weight", 0, 1),
        ),
        released=("model.pth",),
    ),
    WeightFormat(
        "DRCT (ConvNeXt-B)",
        ("drct",),
        "github.com/beibuwandeluori/DRCT: network/models.py (ContrastiveModels), "
        "scripts/train.py, data/transform.py",
        "PadIfNeeded(224) zeros, CenterCrop(224) (floor offsets), no resize, ImageNet "
        "normalisation",
        matches=_all(
            _has("model.stem.0.weight"),
            _has("model.head.fc.weight"),
            _shape("fc.weight", 0, 2),
        ),
        released=("14_acc0.9996.pth", "16_acc0.9993.pth", "last_acc0.9991.pth"),
    ),
    WeightFormat(
        "C2P-CLIP (Tan et al.) Hugging Face CLIP ViT-L/14 image encoder + fc",
        ("c2p_clip",),
        "github.com/chuangchuangtan/C2P-CLIP-DeepfakeDetection: inference.py (C2P_CLIP), data.py",
        "Resize(224) shorter side (PIL bilinear), CenterCrop(224), CLIP normalisation",
        matches=_all(
            _has(
                "model.vision_model.embeddings.class_embedding",
                "model.visual_projection.weight",
                "model.fc.weight",
            ),
            _shape("model.fc.weight", 0, 1),
        ),
        released=("C2P_CLIP_release_20240901.zip",),
    ),
    # -- video detectors, temporal (issue #15): LipForensics ------------------------------
    WeightFormat(
        "LipForensics (Lipreading ResNet-18 + MS-TCN, FF++)",
        ("lipforensics",),
        "github.com/ahaliassos/LipForensics: models/spatiotemporal_net.py Lipreading, "
        'saved as {"model": state_dict}',
        "25 consecutive grayscale mouth crops (96 x 96 around the mouth of a mean-face-"
        "aligned frame, PIL convert('L')), CenterCrop(88), /255, Normalize(0.421, 0.165), "
        "(B, 1, T, 88, 88)",
        matches=_all(
            _shape("frontend3D.0.weight", 1, 1),
            _shape("tcn.tcn_output.weight", 0, 1),
        ),
        released=("lipforensics_ff.pth",),
    ),
    # -- #16, face forgery (face-a): UCF, LSDA ---------------------------------------------
    WeightFormat(
        "DeepfakeBench UCF",
        ("ucf",),
        f"{_DFB}: training/detectors/ucf_detector.py, config/detector/ucf.yaml",
        _DFB_INPUT + "; score softmax(head_sha)[:, 1]",
        matches=_has(
            "encoder_f.conv1.weight",
            "encoder_c.conv1.weight",
            "con_gan.dconv_up3.0.weight",
            "head_sha.mlp.2.weight",
        ),
        released=("ucf_best.pth",),
    ),
    WeightFormat(
        "DeepfakeBench LSDA",
        ("lsda",),
        f"{_DFB}: training/detectors/lsda_detector.py, config/detector/lsda.yaml",
        _DFB_INPUT + "; score softmax(binary_classifier(student_encoder))[:, 1]",
        matches=_has(
            "model.student_encoder.model._conv_stem.weight",
            "model.encoders_f.0.model._conv_stem.weight",
            "model.binary_classifier.2.weight",
        ),
        released=("lsda_best.pth",),
    ),
    # -- video detectors, transformers (issue #15, branch video-tx): TimeSformer, VideoMAE, X-CLIP
    WeightFormat(
        "DeepfakeBench TimeSformer",
        ("timesformer",),
        f"{_DFB}: training/detectors/timesformer_detector.py (TimeSformerDetector.state_dict(): "
        "backbone = transformers' TimesformerModel, head = Linear(768, 2)), "
        "config/detector/timesformer.yaml (commit 0356f95)",
        "clips of 8 consecutive face frames, cv2.resize 224 x 224 (INTER_CUBIC), "
        "Normalize(0.45, 0.225), (B, T, C, H, W)",
        matches=_all(
            _has("backbone.embeddings.time_embeddings", "backbone.embeddings.cls_token"),
            _has("backbone.encoder.layer.0.temporal_attention.attention.qkv.weight"),
            _shape("head.weight", 0, 2),
        ),
    ),
    WeightFormat(
        "DeepfakeBench VideoMAE",
        ("videomae",),
        f"{_DFB}: training/detectors/videomae_detector.py (VideoMAEDetector.state_dict(): "
        "backbone = transformers' VideoMAEModel of MCG-NJU/videomae-base, fc_norm, head = "
        "Linear(768, 2)), config/detector/videomae.yaml",
        "clips of 16 consecutive face frames, cv2.resize 224 x 224 (INTER_CUBIC), "
        "Normalize(0.5, 0.5), (B, T, C, H, W)",
        matches=_all(
            _has("backbone.embeddings.patch_embeddings.projection.weight", "fc_norm.weight"),
            _any(
                _has("backbone.encoder.layer.0.attention.attention.q_bias"),
                _has("backbone.encoder.layer.0.attention.attention.query.bias"),
            ),
            _shape("head.weight", 0, 2),
        ),
    ),
    WeightFormat(
        "DeepfakeBench X-CLIP",
        ("xclip",),
        f"{_DFB}: training/detectors/xclip_detector.py (XCLIPDetector.state_dict(): backbone "
        "= transformers' XCLIPVisionModel, fc_norm, head = Linear(768, 2)), "
        "config/detector/xclip.yaml",
        "clips of 32 consecutive face frames, cv2.resize 224 x 224 (INTER_CUBIC), "
        "Normalize(0.5, 0.5), (B, T, C, H, W) flattened to frames",
        matches=_all(
            _any(
                _has("backbone.vision_model.encoder.layers.0.message_fc.weight"),
                _has("backbone.encoder.layers.0.message_fc.weight"),
            ),
            _has("fc_norm.weight"),
            _shape("head.weight", 0, 2),
        ),
    ),
    # -- AI-generated images, 2024-2025 (issue #16): D3, AIDE, PatchCraft ----------------
    WeightFormat(
        "D3 (Yang et al.) attention head over CLIP ViT-L/14 original + patch-shuffled features",
        ("d3",),
        "github.com/BigAandSmallq/D3: models/clip_models.py "
        "CLIPModelShuffleAttentionPenultimateLayer, models/transformer_attention.py "
        "TransformerAttention, networks/base_model.py save_networks (attention_head.state_dict())",
        "Resize((224, 224)) (PIL bilinear, aspect not kept), CLIP normalisation; the CLIP "
        "encoder (OpenAI ViT-L-14.pt) as detector.backbone_file",
        matches=_all(
            _has("query.weight", "key.weight", "value.weight", "fc.weight"),
            _shape("query.weight", 1, 1024),
            _shape("fc.weight", 1, 2048),
        ),
        released=("classifier.pth",),
    ),
    WeightFormat(
        "AIDE (Yan et al.) SRM ResNet-50 x 2 + OpenCLIP ConvNeXt-XXLarge, whole model",
        ("aide",),
        "github.com/shilinyan99/AIDE: models/AIDE.py AIDE_Model, utils.py save_model "
        "({'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'})",
        "ToTensor at the picture's size, DCT selection of 32 x 32 patches (stride 16, 6 "
        "bands): lowest, highest, 2nd lowest, 2nd highest, and the picture, each "
        "Resize([256, 256]) (bilinear), ImageNet normalisation",
        matches=_all(
            _shape("model_min.conv1.weight", 1, 30),
            _shape("model_max.conv1.weight", 1, 30),
            _has("hpf.hpf.weight", "fc.fc1.weight", "convnext_proj.0.weight"),
        ),
        released=("progan_train.pth",),  # the README's name; others on the Drive unlisted here
    ),
    WeightFormat(
        "PatchCraft (RPTC) SRM + CNN on the poor - rich texture contrast",
        ("patchcraft",),
        "PatchCraft's ModelScope test release as vendored by github.com/kylin0421/"
        "AIGIDetectionZOO: aigidetection_zoo/PatchCraft/networks/RPTC.py Net, "
        "patchcraft_api.py ({'netC': DataParallel state_dict})",
        "ToTensor at the picture's size, 192 random 32 px crops (seed 42 per picture) "
        "ranked by texture diversity, the 64 poorest and the 64 richest tiled into two "
        "256 x 256 pictures, no normalisation",
        matches=_all(
            _shape("group1.hpf.weight", 0, 30),
            _shape("group1_b.0.weight", 1, 90),
            _has("group5.3.weight", "fc2.weight"),
        ),
        released=("RPTC.pth",),  # the vendored copy's name; not confirmed from the authors
    ),
    # -- face forgery, 2022-2025 (issue #16, face-b): Effort -----------------------------------
    WeightFormat(
        "DeepfakeBench Effort (CLIP ViT-L/14, SVD-residual attention)",
        ("effort",),
        f"{_DFB}: training/detectors/effort_detector.py, config/detector/effort.yaml",
        _EFFORT_INPUT,
        matches=_all(
            _has("head.weight", _EFFORT_Q + "weight_main", _EFFORT_Q + "U_residual"),
            _none(_has(_EFFORT_Q + "U_r")),
        ),
        released=("effort_best.pth",),  # DeepfakeBench's <model>_best.pth naming, assumed
    ),
    WeightFormat(
        "Effort (the authors' EffortDetector, with the principal factors U_r/S_r/V_r)",
        ("effort",),
        "github.com/YZY-stack/Effort-AIGI-Detection: DeepfakeBench/training/detectors/"
        "effort_detector.py, demo.py (layout from the code: the released files are on Google Drive)",
        _EFFORT_INPUT,
        matches=_has("head.weight", _EFFORT_Q + "weight_main", _EFFORT_Q + "U_r"),
        # three files (trained on FF++, GenImage SD v1.4, Chameleon) on Google Drive; their
        # names and which of the two layouts they use are not in the repository
        released=(),
    ),
    # -- face forgery, 2022-2025 (issue #16, face-b): UIA-ViT ----------------------------------
    WeightFormat(
        "DeepfakeBench UIA-ViT (ViT-B/16, attention-weighted patch pooling)",
        ("uia_vit",),
        f"{_DFB}: training/detectors/uia_vit_detector.py, config/detector/uia_vit.yaml",
        "face crop resized to 224 x 224 with cv2.resize(INTER_CUBIC), ToTensor, "
        "Normalize(0.5, 0.5) (training/dataset/abstract_dataset.py)",
        matches=_has("model.norm_middle.weight", "model.c_cross", "model.head.weight"),
        released=("uia_vit_best.pth",),  # DeepfakeBench's <model>_best.pth naming, assumed
    ),
    WeightFormat(
        "UIA-ViT (the authors' model_bestacc.pt)",
        ("uia_vit",),
        "github.com/wany0824/UIA-ViT: network/vit_16_base_feat_middle_gal_v2.py, train.py, "
        "test.py (layout from the code: the released files are on Google Drive)",
        "transforms.Resize((224, 224)) (PIL bilinear), ToTensor, Normalize(0.5, 0.5) (test.py)",
        matches=_all(
            _has("norm_middle.weight", "head.weight", "blocks.0.attn.qkv.weight"),
            _none(_has("c_cross")),
        ),
        released=("model_bestacc.pt", "checkpoint.pth.tar"),
    ),
    # -- #12, official weights give the official outputs (branch parity) -----------------
    WeightFormat(
        CAPSULE_SHARED_LAYOUT,
        ("capsule_forensics",),
        f"{_DFB}: training/detectors/capsule_net_detector.py, config/detector/capsule_net.yaml; "
        "deepsift's CapsuleForensics state dict",
        "not recorded in the file: DeepfakeBench's capsule_net checkpoints and deepsift's own "
        "capsule_forensics state dicts have the same keys. DeepfakeBench's: "
        + _DFB_INPUT
        + "; pass experiment=reproduce/deepfakebench_capsule_forensics (or that input as "
        "detector.preprocessing) to reproduce its numbers. A deepsift state dict: the "
        "preprocessing it was trained with (a deepsift checkpoint, best.pt, records it)",
        matches=_all(_has("routing_stats.route_weights"), _prefix("vgg_ext.")),
    ),
)


def formats_for(state: State) -> list[WeightFormat]:
    """The state-dict formats whose signature ``state`` has."""
    return [f for f in FORMATS if f.kind == "state dict" and f.matches(state)]


def format_named(name: str) -> WeightFormat:
    return next(f for f in FORMATS if f.name == name)
