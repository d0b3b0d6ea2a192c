"""Typed run configuration: what to read, what to build, how to train. Resolved once, saved with the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import AlexnetError


# torchvision's ImageNet normalisation (RGB, [0, 1] units): what its pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    source: str = "cifar10"  # "cifar10", a CIFAR tarball / batches folder, or an image folder
    val_split: float = 0.1  # stratified hold-out taken from the training split
    split_seed: int = 0  # fixed apart from the run seed so every run is judged on the same images
    image_size: int | None = None  # model input side; None = the model's own default
    crop_padding: int = 4  # random-crop translation in stored pixels (0 = off)
    crop_scale: float = 0.0  # in-memory training: random-resized crops of at least this share of the area (0 = off)
    store_size: int | None = None  # in-memory image folders: the square side decoded into RAM (None: the first image's)
    flip: bool = True  # random horizontal flip
    flip_mode: str = "random"  # random: a coin per image per epoch | alternate: per image, flipped every other epoch
    cutout: int = 0  # in-memory training: paint a square of this side (stored pixels) with the mean colour; 0 = off
    workers: int = 0  # decode processes for image folders (0 = all cores; streaming: 2)
    loader: str = "auto"  # auto | memory | stream (auto streams folders of images larger than 64 px)
    crop: str = "random-resized"  # streamed training crop: random-resized | paper (resize, random crop)
    resize: int = 256  # streamed evaluation: shorter side before the centre crop
    lighting: bool = False  # the paper's PCA colour lighting (streamed path)
    cache_dir: str | None = None  # decoded-array cache; None = $ALEXNET_DATA or ~/.cache/alexnet
    input_stats: str = "dataset"  # normalisation: dataset (the training images' mean/std) | imagenet (fixed)


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
    channels_last: bool = True  # NHWC activations: oneDNN's (and cuDNN's) faster layout for convolutions
    flush_denormal: bool = True  # CPU: subnormal floats count as zero (FTZ/DAZ), which late epochs otherwise crawl through
    amp: str = "auto"  # auto (CUDA: bf16, or fp16 + GradScaler without bf16; CPU: bf16 if it has bf16 units) | bf16 | fp16 | off
    compile: bool = False
    res_start: int = 0  # progressive resizing: training side (px) of the first epoch; 0 = the input side throughout
    res_ramp: float = 0.75  # progressive resizing: the side reaches the input side after this fraction of training
    time_limit: float = 0.0  # seconds for the whole command (0 = none): schedule by the clock, epochs an upper bound
    replay_clock: str | None = None  # a time-limited run (or its clock.json) whose clock readings this run replays
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); evaluated and saved
    whiten: bool = False  # initialise the first conv from the whitening of training patches
    bn_scale: bool = True  # train batch-norm scales; False freezes them at 1 (airbench)
    bn_bias_lr: float = 1.0  # learning-rate multiplier for batch-norm biases (airbench: 64), decay divided by it
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step
    clip_grad: float = 0.0  # scale the gradients down to this global L2 norm when above it (0 = off)
    sync_bn: bool = False  # SyncBatchNorm across ranks (multi-process runs)
    report: bool = True  # write the HTML report at the end of training
    save_every: float = 0.0  # also save last.pt inside an epoch every this many seconds (0 = at epoch ends only)
    save_every_steps: int = 0  # also save last.pt inside an epoch every this many steps (0 = at epoch ends only)
    early_stop: int = 0  # stop after this many validations without improvement (0 = never)
    min_delta: float = 0.0  # early stopping: a validation accuracy gain of at most this is no improvement
    tensorboard: bool = False  # write TensorBoard event files under RUN/tensorboard
    init_from: str | None = None  # starting weights: a state dict (.pth/.pt/.safetensors), a run or an exported model
    freeze: str | None = None  # train nothing up to and including this layer ("features", "features.6")
    lr_backbone: float | None = None  # learning rate of the layers loaded by init_from (None: lr)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None
    # Without a preset, the recipe chosen from the data (recipe.py): its name, why, its settings, the data's profile.
    recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            data=DataConfig(**d["data"]),
            model=ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d["model"].items()}),
            train=TrainConfig(**d["train"]),
            preset=d.get("preset"),
            recipe=d.get("recipe"),
        )


# Named recipes. Flags given on the command line override them.
DEFAULT_PRESET = "cifar10"
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The three CIFAR presets: CIFAR-sized data on a laptop CPU, each built for a budget (60 s, 300 s, an hour)
    # and tuned on a 10% validation split of the 50,000 training images. One line per setting says why;
    # docs/recipes.md has what each bought, measured, and benchmarks/NOTES.md the raw figures.
    "cifar10-fast": {  # a first result in a minute
        "data": {
            "crop_padding": 0,  # flips only: the ~3 epochs of a slow CPU's minute lose 1.4 points to crops
        },
        "model": {
            "name": "alexnet-cifar",  # the paper's five convolutions and FC head at CIFAR's own 32 px
            "widths": (16, 32, 64, 128, 256),  # narrow: more epochs in the minute beat more width
            "pools": (1, 2, 3, 4),  # conv5 on a 2x2 map, where 256 wide costs what 128 cost at 4x4
            "hidden": 0,  # one FC layer: hidden layers with dropout cost points in short runs
            "dropout": 0.0,  # no hidden layer to drop out
            "pool_first": True,  # max-pool before batch norm: the same function, a quarter of the pixels
        },
        "train": {
            "epochs": 8,  # an upper bound: the clock ends the run first unless the CPU is fast
            "batch_size": 256,  # batch 512 (lr 0.4): 72.24 against 74.66% at two epochs
            "lr": 0.2,  # 0.4, and batch 128 at 0.1, gained nothing here
            "label_smoothing": 0.2,  # 0.1 was within the noise in three screens
            "whiten": True,  # conv1 from the whitening of 3x3 patches: +6 points after one epoch
            "optimizer": "muon",  # conv2-conv5 on Muon: +0.8 points in the minute despite 19% fewer images/s
            "muon_lr": 0.08,  # Muon's plateau at batch 256 (airbench's 0.24 is for batch 2,000)
            "val_every": 0,  # validate once, after the last epoch: every second goes to training
            "report": False,  # the report's 3 s go to training; `alexnet report RUN` writes it later
            "time_limit": 58,  # just under 60 s: the schedule follows the clock on any CPU
        },
    },
    "cifar10": {  # 85% in five minutes; without its time limit, the default recipe of `alexnet train`
        "data": {
            "crop_padding": 1,  # 1 px: 2 px (83.44%) and none (83.70%) fell below 84.50% (seed 0)
        },
        "model": {
            "name": "alexnet-cifar",
            "widths": (24, 48, 96, 192, 192),  # narrow at 32 px, wide where the maps are small
            "pools": (1, 2, 3),  # conv4 and conv5 on 4x4 maps, cheap enough to be 192 wide: 83.95 against 83.06%
            "hidden": 0,  # one FC layer on the flattened 4x4 map
            "dropout": 0.0,  # no hidden layer to drop out
            "pool_first": True,  # the same function, a quarter of the pixels for batch norm and ReLU
        },
        "train": {
            "epochs": 16,  # a bf16 CPU fits all 16 in 295 s; 24 without the clock added only 0.28 points
            "batch_size": 256,  # batch 128 (lr 0.2) was within the noise, at fewer images/s
            "lr": 0.4,  # +0.5 points over 0.2 on three seeds; 0.3 and 0.6 were lower
            "label_smoothing": 0.1,  # above 0.2 on every seed at 10 epochs (SGD); a tie over six with Muon
            "whiten": True,  # conv1 from the whitening of 3x3 patches
            "optimizer": "muon",  # conv2-conv5 on Muon: about +1 point on every seed, for ~3% of the step
            "muon_lr": 0.1,  # the plateau at batch 256 (0.08-0.12); momentum 0.8 was lower
            "val_every": 0,  # validate once, after the last epoch
            "tta_shift": 2,  # 6 test views (flips, 2 px shifts): 84.02 against 83.70% for flips alone
            "time_limit": 295,  # just under 300 s, with room for the report
        },
    },
    # cifar10-best keeps the default 4 px crops: 2 px gave 89.40 against 89.54% and a network that over-fit more.
    "cifar10-best": {  # the best accuracy in an hour
        "model": {
            "name": "alexnet-cifar",
            "widths": (64, 64, 256, 256, 256),  # airbench's shape: 64 channels at 32 and 16 px, 256 below
            "pools": (2, 3, 4),  # conv1 and conv2 at 32 px: 86.6 against 84.4% at 8 epochs for pools 1,2,5
            "global_pool": True,  # conv5's 4x4 map max-pooled whole into the FC layer (part of the same gain)
            "hidden": 0,  # one FC layer: +1.1 points and 13% more images/s than two hidden ones with dropout
            "dropout": 0.0,  # no hidden layer to drop out
            "pool_first": True,  # the same function, a quarter of the pixels for batch norm and ReLU
        },
        "train": {
            "epochs": 40,  # above the ~38 a bf16 CPU fits in the hour, so the clock, not the bound, ends it
            "batch_size": 256,  # batch 128 (twice the steps) ended 0.44 points behind
            "lr": 0.2,  # 0.4 with cutout did not lift it
            "label_smoothing": 0.1,  # 0.2 (with conv5 512 wide) was no better
            "whiten": True,  # conv1 from the whitening of 3x3 patches
            "optimizer": "muon",  # conv2-conv5 on Muon: +0.54 points over SGD on three seeds
            "muon_lr": 0.1,  # as cifar10
            "val_every": 7,  # a progress check every 7 epochs; each costs ~50 s of the hour on a slow CPU
            "tta_shift": 2,  # 6 test views: shifts are worth 0.5-0.6 points over flips alone
            "time_limit": 3590,  # just under the hour
        },
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
    # Fine-tuning torchvision's ImageNet AlexNet on a small folder of photos (docs/finetuning.md): give the
    # weights with --init-from alexnet-owt-7be5be79.pth, optionally --freeze features.
    "finetune": {
        "model": {"name": "alexnet-torchvision"},  # the published weights' layout: they load as they are
        "data": {
            "image_size": 224,  # the side the ImageNet weights were trained at
            "input_stats": "imagenet",  # the weights expect ImageNet's mean/std, not the new folder's
            "loader": "stream",  # photos are decoded per batch, whatever their size
            "crop": "random-resized",  # torchvision's training crop: the augmentation the weights know
            "resize": 256,  # evaluation: shorter side 256, centre 224 crop, as torchvision evaluates
            "val_split": 0.2,  # a small folder: one image in five held out, so the score means something
        },
        "train": {
            "epochs": 8,  # pretrained features adapt in a few passes; more of them over-fit a small folder
            "batch_size": 32,  # a few hundred photos still make ~10 steps an epoch
            "optimizer": "sgd",  # Muon needs batch norm, which this network has none of
            "lr": 0.01,  # the new classifier layer's rate (torchvision trains AlexNet at 0.01)
            "lr_backbone": 0.001,  # the loaded layers at a tenth: large steps would wash out ImageNet features
            "weight_decay": 1e-4,  # torchvision's AlexNet recipe
            "label_smoothing": 0.1,  # softer targets over-fit a few hundred images less
            "warmup_epochs": 0.5,  # the random head's first gradients are large: ramp the rate up
            "schedule": "cosine",  # a smooth decay to 0 over the short run
            "whiten": False,  # the pretrained first conv is kept as it is
        },
    },
    "notebook": {
        "model": {"name": "alexnet", "norm": "batchnorm"},
        "data": {"image_size": 227},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.05},
    },
}


MUON_NEEDS_BATCH_NORM = ("--optimizer muon needs batch norm after every convolution (it fixes the filters' "
                         "scale): add --norm batchnorm or use --optimizer sgd")

# The built-in models' default normalisation (config stays torch-free, so it does not ask the registry).
DEFAULT_NORMS = {"alexnet": "lrn", "alexnet-cifar": "batchnorm", "alexnet-torchvision": "none"}


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
    if parts["train"].init_from and parts["train"].whiten and "whiten" not in train:
        # A preset's whitening would overwrite the first convolution the pretrained weights just set.
        parts["train"] = replace(parts["train"], whiten=False)
    if train.get("early_stop") and "val_every" not in train and parts["train"].val_every == 0:
        # A recipe that validates only at the end would never let --early-stop act: validate every epoch.
        parts["train"] = replace(parts["train"], val_every=1)
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
        (t.clip_grad >= 0, "--clip-grad must be >= 0 (0 = off)"),
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
        (0 <= d.crop_scale < 1, "--crop-scale must be in [0, 1): the smallest share of the image a crop keeps "
                                "(0 = off)"),
        (not (d.crop_scale and d.cutout), "--crop-scale and --cutout do not combine; drop one"),
        (d.store_size is None or 8 <= d.store_size <= 1024, "--store-size must be between 8 and 1024"),
        (t.res_start == 0 or t.res_start >= 8, "--res-start must be >= 8 px (0 = off)"),
        (t.replay_clock is None or t.time_limit > 0,
         "--replay-clock replays a time-limited run's clock: give its --time-limit too"),
        (0 < t.res_ramp <= 1, "--res-ramp must be in (0, 1]: the fraction of training that grows the side"),
        (t.time_limit >= 0, "--time-limit must be >= 0 seconds (0 = none)"),
        (t.time_limit == 0 or t.schedule != "plateau",
         "--schedule plateau cannot follow a --time-limit (it steps on validation, not the clock): pass "
         "--time-limit 0 (the CIFAR presets set one) or --schedule linear or cosine"),
        (t.res_start == 0 or (cfg.model.name == "alexnet-cifar" and cfg.model.global_pool is True),
         "--res-start needs a head that takes any input side: use --model alexnet-cifar --global-pool"),
        (t.val_every >= 0, "--val-every must be >= 0 (0 = after the last epoch only)"),
        (t.save_every >= 0, "--save-every must be >= 0 seconds (0 = at the end of each epoch only)"),
        (t.save_every_steps >= 0, "--save-every-steps must be >= 0 (0 = at the end of each epoch only)"),
        (t.early_stop >= 0, "--early-stop must be >= 0 validations (0 = off)"),
        (t.min_delta >= 0, "--min-delta must be >= 0"),
        (t.early_stop == 0 or d.val_split > 0, "--early-stop watches the validation accuracy: it needs "
                                               "--val-split > 0"),
        (t.early_stop == 0 or t.val_every > 0, "--early-stop counts validations: pass --val-every N (this recipe "
                                               "validates only after the last epoch)"),
        (0 <= t.tta_shift <= 8, "--tta-shift must be between 0 and 8 pixels"),
        (d.workers >= 0, "--workers must be >= 0"),
        (d.loader in ("auto", "memory", "stream"), "--loader must be auto, memory or stream"),
        (d.crop in ("random-resized", "paper"), "--crop must be random-resized or paper"),
        (d.input_stats in ("dataset", "imagenet"), "--input-stats must be dataset or imagenet"),
        (t.lr_backbone is None or t.lr_backbone > 0, "--lr-backbone must be > 0"),
        (not (t.init_from and t.whiten), "--whiten would overwrite the first convolution --init-from loads: "
                                         "drop --whiten"),
        (d.image_size is None or d.resize >= d.image_size or d.loader == "memory",
         "--resize must be at least --image-size"),
    ]
    for ok, message in checks:
        if not ok:
            raise AlexnetError(message)
    return cfg
