"""The model card (README.md) of an exported folder, written from its config.json alone."""

from __future__ import annotations

from typing import Any

SPLITS = {"val": "validation", "train": "training"}
VIEWS = {1: "the image alone", 2: "the image and its mirror image, logits averaged (2 passes)"}


def architecture(model: dict[str, Any]) -> str:
    """One sentence on the network, from its name and options."""
    name, options = model["name"], model.get("options", {})
    if name == "alexnet":
        norm = {"lrn": "local response normalisation after conv1 and conv2 (the paper's)",
                "batchnorm": "batch norm after every convolution (no LRN)",
                "none": "no normalisation layers"}[options.get("norm", "lrn")]
        towers = ("the paper's two towers (conv2, conv4, conv5 grouped)" if options.get("groups", 1) == 2
                  else "one tower")
        return (f"`alexnet`, the 2012 paper's network (Krizhevsky, Sutskever & Hinton): five convolutions "
                f"(11x11 stride 4 first), overlapping 3x3 max-pools, three fully-connected layers of 4096, 4096 and "
                f"{model['num_classes']}; {norm}; {towers}; {model['image_size']} px input.")
    if name == "alexnet-cifar":
        widths = options.get("widths", (64, 128, 256, 256, 256))
        pools = options.get("pools", (1, 2, 5))
        hidden = options.get("hidden", 1024)
        head = ("conv5's features straight into one linear layer" if hidden == 0 else
                f"two hidden fully-connected layers of {hidden}")
        convs = ("an unpadded 2x2 conv1 then four 3x3 convolutions" if options.get("conv1_kernel") == 2
                 else "five 3x3 convolutions")
        norm = {"batchnorm": "batch norm", "none": "no normalisation"}.get(options.get("norm", "batchnorm"))
        whole = ", conv5 max-pooled whole" if options.get("global_pool") else ""
        return (f"`alexnet-cifar`, AlexNet for small images: {convs} {'-'.join(map(str, widths))} wide, {norm} after "
                f"each, max-pools after conv{', conv'.join(map(str, pools))}{whole}; {head}; "
                f"{model['image_size']} px input.")
    if name == "alexnet-torchvision":
        return ("`alexnet-torchvision`, AlexNet as torchvision builds it (the 2014 \"one weird trick\" variant): "
                "64-192-384-256-256 filters in one tower, no LRN, an adaptive 6x6 average pool, fully-connected "
                f"layers of 4096, 4096 and {model['num_classes']}; {model['image_size']} px input.")
    extra = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"`{name}`{f' ({extra})' if extra else ''}, {model['image_size']} px input."


def views_text(views: dict[str, Any]) -> str:
    if views.get("tta") and views.get("tta_shift", 0) > 0:
        s = views["tta_shift"]
        return (f"the image and its mirror image (weight 1/2) and copies moved by {s} px diagonally either way, "
                f"reflect-padded, with their mirror images (1/4 each): 6 passes, logits averaged")
    return VIEWS[2 if views.get("tta") else 1]


def prepare_text(spec: dict[str, Any]) -> str:
    if spec["kind"] == "memory":
        return (f"resize so the shorter side is {spec['store_size']} px (bilinear), then cut out the centre square "
                f"(a {spec['store_size']} x {spec['store_size']} picture goes in as it is)")
    return (f"resize so the shorter side is {spec['resize']} px (bilinear), then cut out the centre "
            f"{spec['image_size']} x {spec['image_size']} square")


def onnx_snippet(spec: dict[str, Any]) -> str:
    """Python that feeds one picture to model.onnx exactly as `alexnet predict` prepares it."""
    if spec["kind"] == "memory":
        s = spec["store_size"]
        fit = [f"s = {s} / min(image.size)",
               f"image = image.resize((max({s}, round(image.width * s)), max({s}, round(image.height * s))), "
               "Image.Resampling.BILINEAR)",
               f"left, top = (image.width - {s}) // 2, (image.height - {s}) // 2"]
    else:
        r, s = spec["resize"], spec["image_size"]
        fit = ["w, h = image.size",
               f"image = image.resize(({r}, int({r} * h / w)) if w <= h else (int({r} * w / h), {r}), "
               "Image.Resampling.BILINEAR)",
               f"left, top = round((image.width - {s}) / 2), round((image.height - {s}) / 2)"]
    side = spec["store_size"] if spec["kind"] == "memory" else spec["image_size"]
    return "\n".join([
        "import json, numpy as np, onnxruntime as ort",
        "from PIL import Image",
        'classes = json.load(open("config.json"))["classes"]',
        'image = Image.open("img.jpg").convert("RGB")',
        *fit,
        f"pixels = np.asarray(image.crop((left, top, left + {side}, top + {side})))[None]  # uint8 (1, S, S, 3)",
        'probs = ort.InferenceSession("model.onnx").run(None, {"images": pixels})[0][0]',
        "print(classes[probs.argmax()], probs.max())",
    ])


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


def accuracy_text(metrics: dict[str, Any]) -> str:
    if metrics.get("accuracy") is None:
        return f"Not measured: {metrics.get('note', 'the run had no validation split')}."
    parts = [f"**{percent(metrics['accuracy'])} top-1**"]
    if metrics.get("top5") is not None:
        parts.append(f"{percent(metrics['top5'])} top-5")
    about = [f"{metrics['num_samples']:,} images"] if metrics.get("num_samples") else []
    about += [metrics["split_description"]] if metrics.get("split_description") else []
    detail = f" ({'; '.join(about)})" if about else ""
    text = (f"{', '.join(parts)} on the {SPLITS.get(metrics['split'], metrics['split'])} split{detail}, "
            f"measured by the training run after epoch {metrics.get('epoch')} with these weights, "
            f"{views_text(metrics.get('views', {}))}, in {metrics.get('precision') or 'fp32'} arithmetic.")
    if metrics.get("train_accuracy") is not None:
        text += (f" Training accuracy in that epoch: {percent(metrics['train_accuracy'])} (on augmented batches, "
                 "while the weights changed).")
    return text


def training_lines(run: dict[str, Any], training: dict[str, Any]) -> list[str]:
    t, d = run["train"], run["data"]
    limit = f", time limit {t['time_limit']:g} s" if t.get("time_limit") else ""
    lines = [
        f"- Recipe: preset `{run.get('preset') or '(none)'}`; epochs trained: {training.get('epochs_trained')} "
        f"(planned {t['epochs']}{limit}).",
        f"- Data: {training.get('dataset') or d['source']}"
        + (f"; {training['num_train']:,} training images, {training.get('num_val') or 0:,} held out for validation "
           f"({d['val_split']:.0%}, stratified, split seed {d['split_seed']})" if training.get("num_train") else "")
        + ".",
        f"- Optimiser: {t['optimizer']}, peak learning rate {t['lr']:g}"
        + (f" (Muon {t['muon_lr']:g})" if t["optimizer"] == "muon" else "")
        + f", batch {t['batch_size']}, {t['schedule']} schedule, label smoothing {t['label_smoothing']:g}, "
          f"weight decay {t['weight_decay']:g}" + (f", weight average (EMA {t['ema']:g}): the averaged weights are "
                                                     "these" if t.get("ema") else "") + ".",
        f"- Seed {t['seed']}; arithmetic {training.get('precision') or 'fp32'}"
        + (f"; {training['train_seconds']:.0f} s of training" if training.get("train_seconds") else "")
        + (f" on {training['hardware'].get('processor') or training['hardware'].get('cpu_isa', '')} "
           f"({training['hardware'].get('device')})" if training.get("hardware") else "") + ".",
    ]
    return lines


def input_section(config: dict[str, Any], graph: bool) -> list[str]:
    spec, side, classes = config["input"], config["input_side"], config["classes"]
    steps = [f"scale and centre each channel: (x - 255 * mean) / (255 * std), mean = "
             f"({', '.join(f'{m:.4f}' for m in spec['mean'])}), std = ({', '.join(f'{s:.4f}' for s in spec['std'])})"]
    if side != spec["image_size"]:
        steps.append(f"resize {side} -> {spec['image_size']} px, bilinear (align_corners=False), as in training")
    steps += ["NHWC -> NCHW", f"the test-time views: {views_text(config['views'])}",
              f"softmax over the {len(classes)} classes -> `probabilities`, float32 (N, {len(classes)})"]
    return ["## Input", "",
            f"{'`images`: ' if graph else ''}uint8 RGB, shape (N, {side}, {side}, 3), any batch size N. To bring a "
            f"picture to {side} x {side} as `alexnet predict` does: {prepare_text(spec)}.", "",
            "Inside the graph, in this order:" if graph else "Then `alexnet` does, in this order:", "",
            *[f"{i}. {step}" for i, step in enumerate(steps, start=1)], ""]


def files_table(config: dict[str, Any]) -> list[str]:
    described = {"model.onnx": f"one ONNX graph (opset {(config.get('onnx') or {}).get('opset')}): uint8 images in, "
                               "class probabilities out",
                 "model.safetensors": "the weights, for `alexnet.load_model` (torch)"}
    for g in config.get("graphs") or []:
        if g["file"] != "model.onnx":
            what = "the same graph in 8-bit arithmetic" if g["precision"] == "int8" else "the same graph"
            described[g["file"]] = (f"{what}, {g['views']} test-time view{'s' if g['views'] > 1 else ''} "
                                    f"(`--precision {g['precision']} --views "
                                    f"{'all' if g['file'] in ('model.onnx', 'model.int8.onnx') else g['views']}`)")
    rows = [f"| `{name}` | {described.get(name, '')}, {info['bytes'] / 1e6:.1f} MB |"
            for name, info in config.get("files", {}).items()]
    return ["| file | what |", "|---|---|", *rows,
            "| `config.json` | classes, input, test-time views, metrics, the training run's config |", ""]


def parity_section(parity: dict[str, Any] | None) -> list[str]:
    if not parity:
        return []
    return ["## ONNX against torch", "",
            f"Checked at export on {parity['images']:,} images of the {parity['split']} split of `{parity['data']}`: "
            f"the largest difference between onnxruntime's and torch's (fp32) probabilities was "
            f"{parity['max_abs_diff']:.2e} (limit {parity['tolerance']:.0e}); top-1 agreed on "
            f"{parity['top1_agree']:,} of {parity['images']:,}; accuracy on them {percent(parity['accuracy_onnx'])} "
            f"(onnx), {percent(parity['accuracy_torch'])} (torch).", ""]


def int8_section(int8: dict[str, Any] | None) -> list[str]:
    if not int8:
        return []
    cal, cpu, speed, rec = int8["calibration"], int8["cpu"], int8["speed"], int8["recommendation"]
    lines = ["## int8", "",
             f"`model.int8.onnx`: onnxruntime static quantization ({int8['format']}) of the convolutions and "
             f"fully-connected layers: weights {int8['weights']}, activations {int8['activations']}, ranges by "
             f"{int8['method']} calibration on {cal['images']:,} images of the {cal['split']} split of "
             f"`{cal['data']}` ({cal['selection']}){'; 7-bit weights (reduce_range)' if int8['reduce_range'] else ''}. "
             f"Normalisation, resize, views and softmax stay fp32.", "",
             f"Measured at export on {cpu['processor']} ({cpu['description']}): {speed['fp32_images_s']:,.0f} images/s "
             f"fp32, {speed['int8_images_s']:,.0f} int8 ({speed['ratio']:.2f}x), batches of {speed['batch']}, "
             f"{speed['threads']} threads."]
    check = int8.get("check")
    if check:
        lines += ["", f"On {check['images']:,} images of the {check['split']} split of `{check['data']}`: accuracy "
                      f"fp32 {percent(check['accuracy_fp32'])}, int8 {percent(check['accuracy_int8'])}; top-1 "
                      f"agreement {check['top1_agree'] / check['images'] * 100:.2f}%; largest probability difference "
                      f"{check['max_abs_diff']:.3f}; sizes {check['bytes_fp32'] / 1e6:.2f} MB and "
                      f"{check['bytes_int8'] / 1e6:.2f} MB."]
    lines += ["", f"`alexnet predict` and `alexnet serve` use **{rec['precision']}** by default on a CPU like that "
                  f"one: {rec['why']}. `--precision fp32` or `--precision int8` chooses.", ""]
    return lines


def use_section(config: dict[str, Any], graph: bool) -> list[str]:
    onnx = ["With onnxruntime, numpy and Pillow only (in this folder):", "", "```python",
            onnx_snippet(config["input"]), "```", ""] if graph else []
    torch = [] if "model.safetensors" not in config.get("files", {}) else [
        "With `alexnet` (DIR: this folder):", "", "```sh", "alexnet predict DIR img.jpg          # top-5 classes",
        "alexnet evaluate DIR --data DATA     # accuracy, per-class scores, confusion matrix", "```", "",
        "or in Python: `alexnet.predict(\"DIR\", [\"img.jpg\"])`, `alexnet.load_model(\"DIR\").model` (torch).", ""]
    return ["## Use it", "", *onnx, *torch]


def model_card(config: dict[str, Any]) -> str:
    """README.md for an exported folder described by `config` (its config.json)."""
    model, classes = config["model"], config["classes"]
    graph = "model.onnx" in config.get("files", {})
    out = [f"# AlexNet image classifier: {len(classes)} classes (`{model['name']}`)", "",
           f"Exported by `alexnet export` (alexnet {config['versions'].get('alexnet')}) from "
           f"`{config.get('source', {}).get('path')}`. This folder describes itself: `config.json` holds everything "
           "below in machine-readable form; nothing in it is a pickle.", "",
           *files_table(config),
           "## Model", "", architecture(model), f"{model['parameters']:,} parameters.", "",
           "## Classes", "", "| index | class |", "|---|---|", *[f"| {i} | {name} |" for i, name in enumerate(classes)],
           "", *input_section(config, graph),
           "## Training", "", *training_lines(config["run"], config.get("training", {})), "",
           "## Accuracy", "", accuracy_text(config.get("metrics") or {}), "",
           *parity_section(config.get("parity")), *int8_section(config.get("int8")), *use_section(config, graph)]
    return "\n".join(out)
