"""Typed run configuration: what to read, what to build, how to train. Resolved once, saved with the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import AlexnetError


@dataclass(frozen=True)
class DataConfig:
    source: str = "cifar10"  # "cifar10", a CIFAR tarball / batches folder, or an image folder
    val_split: float = 0.1  # stratified hold-out taken from the training split
    split_seed: int = 0  # fixed apart from the run seed so every run is judged on the same images
    image_size: int | None = None  # model input side; None = the model's own default
    crop_padding: int = 4  # random-crop translation in stored pixels (0 = off)
    flip: bool = True  # random horizontal flip
    flip_mode: str = "random"  # random: a coin per image per epoch | alternate: per image, flipped every other epoch
    cutout: int = 0  # in-memory training: paint a square of this side (stored pixels) with the mean colour; 0 = off
    workers: int = 0  # decode processes for image folders (0 = all cores; streaming: 2)
    loader: str = "auto"  # auto | memory | stream (auto streams folders of images larger than 64 px)
    crop: str = "random-resized"  # streamed training crop: random-resized | paper (resize, random crop)
    resize: int = 256  # streamed evaluation: shorter side before the centre crop
    lighting: bool = False  # the paper's PCA colour lighting (streamed path)
    cache_dir: str | None = None  # decoded-array cache; None = $ALEXNET_DATA or ~/.cache/alexnet


@dataclass(frozen=True)
class ModelConfig:
    name: str = "alexnet-cifar"
    # Model options; None leaves the model's own default in place.
    norm: str | None = None
    groups: int | None = None
    init: str | None = None
    dropout: float | None = None
    widths: tuple[int, ...] | None = None
    hidden: int | None = None
    pool_first: bool | None = None
    pools: tuple[int, ...] | None = None
    pool_size: int | None = None
    global_pool: bool | None = None
    conv1_kernel: int | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `create_model`, without the ones left at the model default."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.2  # peak learning rate (after warm-up) for batch_size images
    momentum: float = 0.9
    nesterov: bool = True
    optimizer: str = "sgd"  # sgd | muon (conv filters after the first take orthogonalised Muon steps, the rest SGD)
    muon_lr: float = 0.24  # Muon's peak rate (airbench94_muon), decayed on the same schedule as --lr
    muon_momentum: float = 0.6  # Muon's (Nesterov) momentum
    weight_decay: float = 5e-4  # applied to conv/linear weights only, not to biases or norm scales
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    schedule: str = "linear"  # linear | cosine decay to zero after warm-up | plateau (the paper's /10)
    plateau_patience: int = 2  # epochs without a better val accuracy before a plateau schedule divides by 10
    tta: bool = True  # evaluate on the image and its mirror, average the logits
    val_every: int = 1  # validate every N epochs (the last epoch always); 0 = after the last epoch only
    tta_shift: int = 0  # with tta, also average copies translated by this many pixels (0 = flips only)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    channels_last: bool = True
    amp: str = "auto"  # auto (CUDA: bf16, or fp16 + GradScaler without bf16; CPU: bf16 if it has bf16 units) | bf16 | fp16 | off
    compile: bool = False
    res_start: int = 0  # progressive resizing: training side (px) of the first epoch; 0 = the input side throughout
    res_ramp: float = 0.75  # progressive resizing: the side reaches the input side after this fraction of training
    time_limit: float = 0.0  # seconds for the whole command (0 = none): schedule by the clock, epochs an upper bound
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); evaluated and saved
    whiten: bool = False  # initialise the first conv from the whitening of training patches
    bn_scale: bool = True  # train batch-norm scales; False freezes them at 1 (airbench)
    bn_bias_lr: float = 1.0  # learning-rate multiplier for batch-norm biases (airbench: 64), decay divided by it
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step
    sync_bn: bool = False  # SyncBatchNorm across ranks (multi-process runs)
    report: bool = True  # write the HTML report at the end of training


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            data=DataConfig(**d["data"]),
            model=ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d["model"].items()}),
            train=TrainConfig(**d["train"]),
            preset=d.get("preset"),
        )


# Named recipes. Flags given on the command line override them.
DEFAULT_PRESET = "cifar10"
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CIFAR-sized data on a laptop CPU. Tuned on a 10% validation split of the 50,000 training images;
    # measured times and accuracies are in the README and benchmarks/NOTES.md. All three whiten the first
    # conv from image patches and max-pool before batch norm (pool_first: the same function, faster).
    # cifar10-fast: 16-32-64-128-256 with one FC layer (403 k parameters), validated once at the end; it
    # skips the HTML report (3 s of a 60 s budget): `alexnet report RUN` writes it afterwards.
    # Each CIFAR preset also carries a time limit just under its budget (60 s, 300 s, an hour): where the
    # epochs fit (the AVX-512 box they were tuned on) it never acts; on a slower CPU (the AVX2-only box:
    # 2.6-2.9x fewer images/s) the schedule follows the clock and the run still ends inside the budget.
    # Flips only, no crops: the run ends after ~3 epochs on an AVX2-only box, where translations cost
    # 1.4 points (77.11 against 75.7% over 3 seeds; 76.4 against 77.7 with the deeper 4x4 stage below).
    # Max-pools after conv1, conv2 and conv3, so conv4 and conv5 run on 4x4 maps and can be 128 wide:
    # 266 k parameters and ~20% more images/s than 64-wide conv4/conv5 at 8x8 (the paper's pooling),
    # 77.79 against 76.95% over 3 seeds in the same minute. Up to 8 epochs: the AVX2 box fits ~3.2 (measured
    # with a bound of 5, the same schedule there, as the decay follows the clock); a faster box gets more.
    # A fourth max-pool, after conv4, puts conv5 on a 2x2 map where it can be 256 wide for a quarter of its
    # 4x4 cost: 16-32-64-128-256, 403 k parameters, 5.2 M MACs, ~9% more images/s; 78.20% against 77.86% over
    # seeds 0-3 in the same minute (3 of 4 seeds higher; label smoothing 0.1 with it: 78.22 / 78.58, kept 0.2).
    # conv2-conv5 take Muon steps (--optimizer muon, rate 0.08): 79.27 against 78.47% over seeds 0-2 in the
    # same minute, although it trains 19% fewer images/s here (the Newton-Schulz products of conv5's 256 filters).
    "cifar10-fast": {
        "data": {"crop_padding": 0},
        "model": {"name": "alexnet-cifar", "widths": (16, 32, 64, 128, 256), "pools": (1, 2, 3, 4), "hidden": 0,
                  "dropout": 0.0, "pool_first": True},
        "train": {"epochs": 8, "batch_size": 256, "lr": 0.2, "label_smoothing": 0.2, "whiten": True,
                  "optimizer": "muon", "muon_lr": 0.08,
                  "val_every": 0, "report": False, "time_limit": 58},
    },
    # The default recipe of `alexnet train`: 24-48-96-192-192 with cifar10-fast's pooling (max-pools after
    # conv1, conv2, conv3: conv4 and conv5 on 4x4 maps, flattened into one FC layer), up to 16 epochs (the
    # AVX2-only box fits ~10 in 295 s at ~1,550 img/s; measured with a bound of 12, which the clock there
    # makes the same schedule), 6-view test-time augmentation, crops moved by up to
    # 1 px (2 px: 83.44 against 84.50%, seed 0). Over 3 seeds on that box 84.11% against 83.06% for the
    # previous 32-32-128-128-128 with pools after conv2, conv3, conv4 and a global max-pool (~4 epochs there;
    # 86.36% in its 9 epochs on the AVX-512 box). Peak lr 0.4 (0.3: 83.80%, 0.6: 83.36% against 84.02%, 10 epochs,
    # seed 0). Label smoothing 0.1: 84.52% against 84.13% for 0.2 over 3 seeds at 10 epochs, every seed higher
    # (3 cold time-limited seeds on a slower hour of the box, 9-10 epochs: 83.98%, as 0.2's 83.95% at 10).
    # conv2-conv5 take Muon steps (--optimizer muon; airbench94_muon's optimizer): at 10 epochs 85.48 / 85.74 /
    # 85.54% (seeds 0-2; muon rate 0.08 for seed 0, 0.1 for 1 and 2; 0.12: 85.40, 0.05: 85.02, seed 0) against
    # 84.50 / 84.74 / 84.32% with SGD, for ~3% of the step; Muon momentum 0.8: 84.66%, 2 px crops: 85.02%.
    "cifar10": {
        "data": {"crop_padding": 1},
        "model": {"name": "alexnet-cifar", "widths": (24, 48, 96, 192, 192), "pools": (1, 2, 3), "hidden": 0,
                  "dropout": 0.0, "pool_first": True},
        "train": {"epochs": 16, "batch_size": 256, "lr": 0.4, "label_smoothing": 0.1, "whiten": True,
                  "optimizer": "muon", "muon_lr": 0.1,
                  "val_every": 0, "tta_shift": 2, "time_limit": 295},
    },
    # 64-64-256-256-256 with conv1 and conv2 at full resolution (max-pools after conv2, conv3, conv4), conv5's
    # map max-pooled whole into one FC layer (airbench's layout cut to five convolutions: 86.6% at 8 epochs
    # against 84.4% for the paper's pooling after conv1, conv2, conv5 with a flattened 4x4 map), up to 40 epochs
    # (35 took about 52 minutes on the first sessions' 2-core AVX-512 boxes; the clock allows ~38 under bf16 on
    # the eleventh session's box, 21 in fp32 on the tenth's, ~15 on the AVX2-only one), validated every 7 on
    # flips and 2-pixel translations (6 views).
    # The layout of the two presets above at 48-96-192-384-384 (2.26 M parameters, ~460 img/s on the AVX2 box,
    # 36 epochs in the hour there) reached 88.40% (seed 0) against 88.64-89.00% for this one's ~15 epochs
    # there: it ends at 98.0% training accuracy with 4 px crops, over-fitting; not adopted.
    # conv2-conv5 take Muon steps (rate 0.1, as cifar10): 89.54 / 89.16 / 89.34% (seeds 0-2, AVX2 box, 15-16
    # epochs begun in the hour) against 88.64 / 88.78 / 89.00% with SGD (seeds 0-2).
    # The bound was 35 until bf16 autocast on a CPU with AVX512_BF16 trained it at ~470 img/s: 40 lets the clock,
    # not the bound, end the hour there (90.54 / 89.82 / 90.72%, seeds 0 / 1 / 2, 38 epochs; 40 without the limit:
    # 90.20% in 3,933 s). 64-128-256-512-512 with cutout 8 (2.1x the MACs, 19 epochs in that hour): 90.04%, seed 0;
    # with sides 16 -> 32 px over the first half hour (29 epochs): 89.96%; neither adopted.
    # Conv5 512 wide with label smoothing 0.2: 90.52% (36 epochs); batch 128 (lr 0.1, Muon 0.07): 90.10%; two hidden FC
    # layers of 1024 with dropout 0.5: 69.70% at epoch 14 against 80.42% (stopped); airbench's 2x2 stem into
    # 24-64-256-256-256 (--conv1-kernel 2, 1.4x the images/s): 89.72% after 60 epochs. Seed 0 each; none adopted.
    "cifar10-best": {
        "model": {"name": "alexnet-cifar", "widths": (64, 64, 256, 256, 256), "pools": (2, 3, 4),
                  "global_pool": True, "hidden": 0, "dropout": 0.0, "pool_first": True},
        "train": {"epochs": 40, "batch_size": 256, "lr": 0.2, "label_smoothing": 0.1, "whiten": True,
                  "optimizer": "muon", "muon_lr": 0.1,
                  "val_every": 7, "tta_shift": 2, "time_limit": 3590},
    },
    # The 2012 paper's recipe (section 5): SGD 0.01, momentum 0.9, weight decay 5e-4, batch 128, the rate
    # divided by 10 when validation stops improving, 90 epochs, LRN, resize-256 + random 227 crops (the
    # layer arithmetic needs 227 although the paper writes 224), PCA lighting.
    "imagenet-paper": {
        "model": {"name": "alexnet", "norm": "lrn", "init": "paper"},
        "data": {"image_size": 227, "loader": "stream", "crop": "paper", "resize": 256, "lighting": True,
                 "val_split": 0.02},
        "train": {"epochs": 90, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "nesterov": False,
                  "weight_decay": 5e-4, "label_smoothing": 0.0, "warmup_epochs": 0, "schedule": "plateau",
                  "plateau_patience": 2, "tta": False},
    },
    # A modern schedule: batch norm, random-resized crops, label smoothing, warm-up + cosine decay.
    "imagenet": {
        "model": {"name": "alexnet", "norm": "batchnorm"},
        "data": {"image_size": 227, "loader": "stream", "crop": "random-resized", "resize": 256,
                 "val_split": 0.02},
        "train": {"epochs": 40, "batch_size": 256, "lr": 0.1, "weight_decay": 5e-5, "label_smoothing": 0.1,
                  "warmup_epochs": 2, "schedule": "cosine", "tta": False},
    },
    # The notebook recipe: the paper network with batch norm on CIFAR-10 upsampled to 227 px.
    "notebook": {
        "model": {"name": "alexnet", "norm": "batchnorm"},
        "data": {"image_size": 227},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.05},
    },
}


MUON_NEEDS_BATCH_NORM = ("--optimizer muon needs batch norm after every convolution (it fixes the filters' "
                         "scale): add --norm batchnorm or use --optimizer sgd")

# The built-in models' default normalisation (config stays torch-free, so it does not ask the registry).
DEFAULT_NORMS = {"alexnet": "lrn", "alexnet-cifar": "batchnorm"}


def model_norm(model: ModelConfig) -> str | None:
    """The normalisation the model will be built with; None for a model this module does not know."""
    return model.norm if model.norm is not None else DEFAULT_NORMS.get(model.name)


def apply_overrides(cfg: RunConfig, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """Return `cfg` with {"data"|"model"|"train": {field: value}} replaced; unknown fields are errors."""
    parts = {"data": cfg.data, "model": cfg.model, "train": cfg.train}
    new_model = overrides.get("model", {}).get("name")
    if new_model is not None and new_model != cfg.model.name:
        # A preset's model options (widths, norm...) belong to its model; another model starts from its own.
        parts["model"] = ModelConfig(name=new_model)
    for section, values in overrides.items():
        known = {f.name for f in fields(parts[section])}
        unknown = set(values) - known
        if unknown:
            raise AlexnetError(f"unknown {section} option(s): {', '.join(sorted(unknown))}")
        parts[section] = replace(parts[section], **values)
    train = overrides.get("train", {})
    if parts["train"].optimizer == "muon" and "optimizer" not in train and model_norm(parts["model"]) not in (
            "batchnorm", None):
        # A preset's Muon needs batch norm after every conv (it fixes the filters' scale): a network without
        # it (`--norm none`, the paper's LRN) trains with the preset's SGD settings instead.
        parts["train"] = replace(parts["train"], optimizer="sgd")
    if "epochs" in train and "time_limit" not in train:
        # A preset's time limit belongs to its recipe: asking for N epochs means N epochs, whatever they take.
        parts["train"] = replace(parts["train"], time_limit=0.0)
    return replace(cfg, **parts)


def preset_config(name: str | None) -> RunConfig:
    """The config of a named preset (None = the default recipe: the `cifar10` preset without its time limit,
    so a plain `alexnet train` runs its epochs whatever the machine; naming the preset adds the budget)."""
    if name is None:
        cfg = preset_config(DEFAULT_PRESET)
        return replace(cfg, train=replace(cfg.train, time_limit=0.0))
    if name not in PRESETS:
        raise AlexnetError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(apply_overrides(RunConfig(), PRESETS[name]), preset=name)


def validate(cfg: RunConfig) -> RunConfig:
    """Check ranges once, so a bad flag fails before any data is read."""
    t, d = cfg.train, cfg.data
    checks = [
        (t.epochs >= 1, "--epochs must be >= 1"),
        (t.batch_size >= 1, "--batch-size must be >= 1"),
        (t.lr > 0, "--lr must be > 0"),
        (0 <= t.momentum < 1, "--momentum must be in [0, 1)"),
        (t.optimizer in ("sgd", "muon"), "--optimizer must be sgd or muon"),
        (t.optimizer != "muon" or model_norm(cfg.model) in ("batchnorm", None), MUON_NEEDS_BATCH_NORM),
        (t.muon_lr > 0, "--muon-lr must be > 0"),
        (0 <= t.muon_momentum < 1, "--muon-momentum must be in [0, 1)"),
        (t.weight_decay >= 0, "--weight-decay must be >= 0"),
        (0 <= t.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (0 <= t.ema < 1, "--ema must be in [0, 1)"),
        (t.bn_bias_lr > 0, "--bn-bias-lr must be > 0 (1 = the same rate as the weights)"),
        (t.accum_steps >= 1, "--accum-steps must be >= 1"),
        (t.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (t.schedule in ("linear", "cosine", "plateau"), "--schedule must be linear, cosine or plateau"),
        (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:"),
         "--device must be auto, cpu, cuda or mps"),
        (t.amp in ("auto", "bf16", "fp16", "off"), "--amp must be auto, bf16, fp16 or off"),
        (0 <= d.val_split < 1, "--val-split must be in [0, 1)"),
        (d.image_size is None or 8 <= d.image_size <= 1024, "--image-size must be between 8 and 1024"),
        (0 <= d.crop_padding <= 64, "--crop-padding must be between 0 and 64"),
        (d.flip_mode in ("random", "alternate"), "--flip-mode must be random or alternate"),
        (0 <= d.cutout <= 64, "--cutout must be between 0 and 64 pixels (0 = off)"),
        (t.res_start == 0 or t.res_start >= 8, "--res-start must be >= 8 px (0 = off)"),
        (0 < t.res_ramp <= 1, "--res-ramp must be in (0, 1]: the fraction of training that grows the side"),
        (t.time_limit >= 0, "--time-limit must be >= 0 seconds (0 = none)"),
        (t.time_limit == 0 or t.schedule != "plateau",
         "--schedule plateau cannot follow a --time-limit (it steps on validation, not the clock): pass "
         "--time-limit 0 (the CIFAR presets set one) or --schedule linear or cosine"),
        (t.res_start == 0 or (cfg.model.name == "alexnet-cifar" and cfg.model.global_pool is True),
         "--res-start needs a head that takes any input side: use --model alexnet-cifar --global-pool"),
        (t.val_every >= 0, "--val-every must be >= 0 (0 = after the last epoch only)"),
        (0 <= t.tta_shift <= 8, "--tta-shift must be between 0 and 8 pixels"),
        (d.workers >= 0, "--workers must be >= 0"),
        (d.loader in ("auto", "memory", "stream"), "--loader must be auto, memory or stream"),
        (d.crop in ("random-resized", "paper"), "--crop must be random-resized or paper"),
        (d.image_size is None or d.resize >= d.image_size or d.loader == "memory",
         "--resize must be at least --image-size"),
    ]
    for ok, message in checks:
        if not ok:
            raise AlexnetError(message)
    return cfg
