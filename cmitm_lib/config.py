"""Presets as plain dataclasses, and the checks every public entry point runs on its arguments.

Two presets:
- ``paper``: the values of the CMITM paper (ViT-B/16, BERT-base, 224/448, decoders of 4 and 2 blocks,
  AdamW 1.5e-4 / 2e-5, wd 0.05, batch 256, 200 + 50 epochs). Where the paper is silent the values
  come from the public code of the paper family (MRM, CMITM) and say so in a comment.
- ``tiny``: the same architecture shrunk so that the whole cascade runs on a laptop CPU in minutes on
  the embedded SynthCXR data (64-px input, 8-px patches, 128-px reconstruction target).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


ENCODERS = ("vit", "cnn")  # ModelConfig.encoder's choices
GLOBAL_POOLS = ("avg", "avgmax")  # ModelConfig.global_pool's choices
HEAD_INITS = ("zero", "probe")  # FinetuneConfig.head_init's choices


@dataclass
class ModelConfig:
    img_size: int = 224  # encoder input side (the low-resolution view)
    patch_size: int = 16
    in_chans: int = 1  # grayscale radiographs
    embed_dim: int = 768  # E_v width
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # How token sets are pooled wherever the paper says AvgPool (E_v's classifier, D_r -> h_v, q_um -> D_t):
    # a timm pool type. "avg" = the paper's; "avgmax" = (mean + max) / 2, which lets a few-pixel finding in
    # one patch reach the pooled vector (the tiny preset: benchmarks/README.md, "Supervised reference").
    global_pool: str = "avg"  # one of GLOBAL_POOLS
    # "vit" = the paper's E_v. "cnn" = models.ConvEncoder, an opt-in convolutional E_v with leak-free
    # masking for CPU budgets (not the paper; E_v's depth and num_heads are then unused).
    encoder: str = "vit"  # one of ENCODERS
    dec_dim: int = 768  # D_v width (MRM: 768, 6 heads)
    dec_depth: int = 4  # paper: 4 blocks
    dec_heads: int = 6
    rep_dim: int = 768  # D_r width
    rep_depth: int = 2  # paper: 2 blocks
    rep_heads: int = 6
    use_rep_decoder: bool = True  # False = the "- representation decoder" ablation (mean of visible tokens)
    target_scale: int = 2  # D_v predicts a (2p x 2p) patch of the 2x view for each p x p input patch
    norm_pix: bool = True  # per-patch normalised reconstruction target (MAE)
    proj_hidden: int = 2048  # CMITM code: 768 -> 2048 -> BN -> ReLU -> 128 -> BN(no affine)
    proj_dim: int = 128
    vocab_size: int = 30522  # replaced by the trained tokenizer's size when a model is built
    text_hidden: int = 768  # BERT-base
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    max_len: int = 100  # MRM: reports truncated to 100 tokens


@dataclass
class DataConfig:
    hi_size: int = 448  # side of the reconstruction target view
    crop_scale: tuple[float, float] = (0.2, 1.0)  # MRM: RandomResizedCrop(448, scale=(0.2, 1.0))
    hflip: float = 0.5  # MRM flips; note a flip swaps left/right words of the report
    mean: float = 0.4978  # MRM grayscale normalisation
    std: float = 0.2449
    n_pretrain: int = 0  # SynthCXR only: number of pre-training pairs (0 = whole real dataset)
    n_heldout: int = 0  # SynthCXR only: held-out pairs for retrieval
    n_finetune: tuple[int, int, int] = (0, 0, 0)  # SynthCXR only: downstream train / val / test
    synth_size: int = 128  # SynthCXR only: rendered side before cropping
    synth_level: str = "lesson"  # SynthCXR only: "lesson" (findings visible at 64 px) or "subtle" (data.synth.LEVELS)


@dataclass
class StageConfig:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1.5e-4  # peak learning rate as used (not rescaled when batch_size changes)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)  # MRM / MAE
    warmup: float = 0.2  # fraction of the run spent in linear warmup (MRM: 40 of 200 epochs)
    mask_ratio: float = 0.75
    text_mask_ratio: float = 0.5
    temperature: float = 0.07


@dataclass
class FinetuneConfig:
    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "sgd"  # MRM fine-tuning: SGD momentum 0.9
    lr: dict[str, float] = field(default_factory=lambda: {"0.01": 3e-2, "0.1": 3e-3, "1.0": 3e-3})
    weight_decay: float = 0.0
    warmup: float = 0.1
    grad_clip: float = 1.0
    crop_scale: tuple[float, float] = (0.8, 1.0)
    # An epoch draws at least this many images (with replacement when the labelled subset is smaller), so
    # that 1% of the labels still gets enough optimizer steps: epochs * ceil(min_images / batch_size).
    min_images_per_epoch: int = 256
    # How the linear head starts. "zero": MAE's near-zero head (MRM, the paper). "probe": LP-FT (Kumar et al.,
    # ICLR 2022): the head starts as the logistic-regression probe of the frozen E_v on the labelled images
    # (`evaluate.fit_probe`), so the first steps refine read-out features instead of distorting them.
    head_init: str = "zero"  # one of HEAD_INITS

    def lr_for(self, fraction: float) -> float:
        """The learning rate for a label fraction: the listed value of the nearest listed fraction."""
        keys = sorted(self.lr, key=lambda k: abs(float(k) - fraction))
        return self.lr[keys[0]]


@dataclass
class Preset:
    name: str
    model: ModelConfig
    data: DataConfig
    stage1: StageConfig
    stage2: StageConfig
    finetune: FinetuneConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _paper() -> Preset:
    return Preset(
        name="paper",
        model=ModelConfig(),
        data=DataConfig(),
        stage1=StageConfig(epochs=200, lr=1.5e-4, warmup=0.2),
        # Stage 2: paper lr 2e-5, 50 epochs; CMITM code warms up over 40% of the steps, then cosine.
        stage2=StageConfig(epochs=50, lr=2e-5, warmup=0.4),
        finetune=FinetuneConfig(),
    )


def _tiny() -> Preset:
    return Preset(
        name="tiny",
        model=ModelConfig(
            img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, global_pool="avgmax",
            dec_dim=128, dec_depth=2, dec_heads=4, rep_dim=128, rep_depth=2, rep_heads=4,
            proj_hidden=512, proj_dim=64,
            vocab_size=1000, text_hidden=128, text_layers=2, text_heads=2, text_intermediate=512, max_len=64,
        ),
        # No flip: SynthCXR reports name the side of effusions, nodules, pneumothoraces.
        data=DataConfig(hi_size=128, crop_scale=(0.6, 1.0), hflip=0.0,
                        n_pretrain=4000, n_heldout=500, n_finetune=(5000, 500, 1000), synth_size=128),
        # Stage 1 at 3e-4 (paper 1.5e-4): at 1e-3 stage 1 hands stage 2 an E_v that even a perfect text side
        # lifts 5-7 probe points less (docs/RESULTS.md, "What held stage 2 back at 64 px").
        stage1=StageConfig(epochs=6, batch_size=64, lr=3e-4, warmup=0.1),
        # The paper's 2e-5 barely moves a tiny model in minutes; 12 epochs at 1e-3 take L_c below its uniform
        # level 2 ln B (benchmarks/README.md, "Lesson recipe"). Image mask ratio 0.5, not the paper's 0.75: at
        # 64 px the 16 patches left visible rarely show a finding, and even the findings each report states,
        # taught directly through stage 2's image path, train no better than the prevalences at 0.75
        # (docs/RESULTS.md, "What held stage 2 back at 64 px"). The paper preset keeps 0.75.
        stage2=StageConfig(epochs=12, batch_size=64, lr=1e-3, warmup=0.1, mask_ratio=0.5),
        # At 1% (50 labels) an epoch of 512 images gives 160 steps in 20 epochs; 80 steps left random init
        # far from what it reaches. LP-FT: from MAE's near-zero head the first steps distort a good E_v (an
        # encoder supervised on the pre-training images' findings: probe 0.893, fine-tuned 0.827; LP-FT 0.887)
        # (benchmarks/README.md, "Lesson recipe").
        finetune=FinetuneConfig(epochs=20, batch_size=64, optimizer="adamw",
                                lr={"0.01": 1e-3, "0.1": 5e-4, "1.0": 5e-4}, weight_decay=0.05,
                                min_images_per_epoch=512, head_init="probe"),
    )


PRESETS = {"tiny": _tiny, "paper": _paper}


def get_preset(name: str) -> Preset:
    """A fresh copy of the named preset (``tiny`` or ``paper``)."""
    check_choice("preset", name, PRESETS)
    return PRESETS[name]()


def preset_from_dict(d: dict[str, Any]) -> Preset:
    """Rebuild a Preset from ``Preset.to_dict()`` output (as stored in a checkpoint's config.json)."""
    def tup(x):
        return tuple(x) if isinstance(x, list) else x

    def build(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"config for {cls.__name__} has unknown keys {sorted(unknown)}: it was written by "
                             f"another version of cmitm-kit; train it again with this one (the lessons' "
                             f"checkpoints: make demo)")
        return cls(**{k: tup(v) for k, v in values.items()})

    return Preset(
        name=d["name"], model=build(ModelConfig, d["model"]), data=build(DataConfig, d["data"]),
        stage1=build(StageConfig, d["stage1"]), stage2=build(StageConfig, d["stage2"]),
        finetune=build(FinetuneConfig, d["finetune"]),
    )


# ---------------------------------------------------------------------------------------------
# Argument checks: each names the parameter, the value given and what is valid.
# ---------------------------------------------------------------------------------------------
def check_choice(param: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{param}={value!r} is not valid; choose one of: {', '.join(map(repr, valid))}")


def check_positive_int(param: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{param}={value!r} is not valid; it must be a positive integer (1, 2, ...)")


def check_positive(param: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{param}={value!r} is not valid; it must be a number > 0")


def check_ratio(param: str, value: Any, allow_zero: bool = False) -> None:
    """A ratio in (0, 1); with allow_zero, in [0, 1) (0 = no masking, for the ablation)."""
    lo_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{param}={value!r} is not valid; it must lie in the open interval {interval}")


def check_fraction(param: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise ValueError(f"{param}={value!r} is not valid; it must lie in (0, 1], e.g. 0.01, 0.1 or 1.0")


def parse_mapping(param: str, value: Any) -> dict:
    """A dict parameter as papermill gives it: a dict (``-y``) or JSON text (``-p``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{param}={value!r} is not valid JSON ({err}); pass e.g. "
                             f"-y '{param}: {{key: value}}' or -p {param} '{{\"key\": value}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{param}={value!r} must be a dict (JSON object), e.g. {{\"key\": value}}")
    return value


def flat_diff(saved: dict, now: dict, ignore=(), names=("saved", "now")) -> list[str]:
    """Where two nested JSON-like dicts differ, one "a.b: saved X, now Y" line per dotted key (a key
    missing on one side reads "(absent)"); keys in ``ignore`` are left out."""
    def flat(d, prefix=""):
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(prefix + k, v)])}
    a, b = flat(saved), flat(now)
    show = {"a": lambda k: repr(a[k]) if k in a else "(absent)", "b": lambda k: repr(b[k]) if k in b else "(absent)"}
    return [f"{k}: {names[0]} {show['a'](k)}, {names[1]} {show['b'](k)}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k, ...) != b.get(k, ...)]
