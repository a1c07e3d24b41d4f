"""Vision throughput, side by side in one process.

1. Training images/s of scalelab's airbench run (the airbench94 recipe: label smoothing,
   Nesterov SGD with parameter groups, lookahead, alternating flip + translate on device)
   against a hand-written loop of the same recipe, net, batch and precision (written here
   the way the airbench script does it: pre-padded images, crops grouped by shift). Steady
   state: the time from step 2 to the last step, both sides. Goal >= 1.0 (scalelab/ref).
   CPU at a small width by default; `--device cuda --widths 64 256 256 --batch 1024` on a GPU.
2. Image-folder pipeline: decoded, augmented images/s of scalelab's imagefolder dataset
   (Pillow in DataLoader workers: random-resized crop + flip, normalised) against a plain
   Pillow + DataLoader loop doing the same (open, decode, random-resized crop, flip,
   normalise) with the same workers over the same 500 x 375 JPEG files (ImageNet's typical
   size). Goal >= 1.0; images/s per worker reported.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, report  # noqa: E402

from scalelab.plugin import instantiate  # noqa: E402
from scalelab.registry import tasks  # noqa: E402
from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import Callback, Hooks, train_run  # noqa: E402
from scalelab.train.common import build  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def recipe(widths, batch, steps, precision, device) -> dict:
    raw = {"name": "bench", "task": {"name": "cifar10", "synthetic": 500, "num_val": 100},
           "model": {"name": "airbench", "widths": list(widths)},
           "train": {"optimizer": "sgd", "momentum": 0.85, "nesterov": True, "lr": 1.5,
                     "weight_decay": 0.0013304348, "batch_size": batch, "max_steps": steps,
                     "label_smoothing": 0.2, "schedule": "airbench", "warmup_fraction": 0.2,
                     "initial_lr_ratio": 0.2, "final_lr_ratio": 0.07,
                     "param_groups": [{"match": "*norm*.bias", "lr_scale": 64,
                                       "weight_decay_scale": 0.015625}],
                     "averaging": {"kind": "lookahead", "every": 5, "decay": 0.7737809375,
                                   "warmup_power": 3},
                     "augment": {"flip": "alternating", "translate": 2},
                     "restore_best": False, "eval_every": 10 ** 6, "precision": precision,
                     "channels_last": device != "cpu"},
           "seeds": [0]}
    return validate_study(raw, "bench").runs[0].config


class StepClock(Callback):
    def __init__(self, device):
        self.device, self.times = device, []

    def on_step(self, step, losses):
        if self.device != "cpu":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def scalelab_rate(config, device) -> float:
    clock = StepClock(device)
    result = train_run(config, device, hooks=Hooks(callbacks=[clock]))
    assert result.status == "completed", result.error
    return (len(clock.times) - 1) * config["train"]["batch_size"] / (clock.times[-1] - clock.times[0])


def reference_rate(config, device) -> float:
    """The recipe by hand: its own optimizer, schedule, augmentation and lookahead."""
    data = instantiate(tasks, config["task"]).load().to(device)
    model = build(config, data).to(device)
    if device != "cpu":
        model = model.to(memory_format=torch.channels_last)
    batch, steps = config["train"]["batch_size"], config["train"]["max_steps"]
    norm = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    rest = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    lr, wd = 1.5, 0.0013304348
    optimizer = torch.optim.SGD([{"params": norm, "lr": lr * 64, "weight_decay": wd / 64},
                                 {"params": rest, "lr": lr, "weight_decay": wd}],
                                momentum=0.85, nesterov=True)
    peaks = [g["lr"] for g in optimizer.param_groups]
    schedule = np.interp(np.arange(steps + 1), [0, int(0.2 * steps), steps], [0.2, 1, 0.07])
    average = {k: v.clone() for k, v in model.state_dict().items()}
    n = len(data.y_train)
    padded = F.pad(data.x_train, (2, 2, 2, 2), mode="reflect")  # once, as airbench does
    flips = torch.rand(n, device=device) < 0.5
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=config["train"]["precision"] == "bf16")
    times, order, cursor, epoch = [], None, n, -1
    for step in range(steps):
        if cursor + batch > n:
            order, cursor, epoch = torch.randperm(n, device=device), 0, epoch + 1
        rows = order[cursor:cursor + batch]
        cursor += batch
        images = torch.empty_like(data.x_train[rows])
        shifts = torch.randint(0, 5, (batch, 2), device=device)
        source = padded[rows]
        for dy in range(5):
            for dx in range(5):
                mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                images[mask] = source[mask, :, dy:dy + 32, dx:dx + 32]
        flip = flips[rows] ^ bool(epoch % 2)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if device != "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        for g, peak in zip(optimizer.param_groups, peaks):
            g["lr"] = peak * schedule[step]
        with autocast:
            loss = F.cross_entropy(model(images), data.y_train[rows], label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 5 == 0:
            decay = 0.7737809375 * ((step + 1) / steps) ** 3
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        average[k].lerp_(v, 1 - decay)
                        v.copy_(average[k])
        loss.item()  # the per-step loss read scalelab also makes (finiteness check)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return (len(times) - 1) * batch / (times[-1] - times[0])


def plain_folder_rate(folder: Path, workers: int, size: int, batches: int, batch: int) -> float:
    from PIL import Image

    files = sorted(folder.rglob("*.jpg"))

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as f:
                image = f.convert("RGB")
            w, h = image.size
            box = None
            for _ in range(10):  # random-resized crop, as scalelab's (and torchvision's)
                area = w * h * (0.08 + 0.92 * torch.rand(()).item())
                ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(()).item())
                cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if 0 < cw <= w and 0 < ch <= h:
                    left = int(torch.randint(0, w - cw + 1, ()))
                    top = int(torch.randint(0, h - ch + 1, ()))
                    box = (left, top, left + cw, top + ch)
                    break
            side = min(w, h)
            box = box or ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
            image = image.resize((size, size), Image.BILINEAR, box=box)
            if torch.rand(()) < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
            return (x.float().div_(255) - MEAN) / STD, 0

    return _drain(Plain(), workers, batches, batch)


def scalelab_folder_rate(root: Path, workers: int, size: int, batches: int, batch: int) -> float:
    data = instantiate(tasks, {"name": "imagefolder", "path": str(root), "num_val": 1,
                               "image_size": size, "resize": size + 32,
                               "workers": workers}).load()
    return _drain(data.dataset("train", train_view=True), workers, batches, batch)


def _drain(dataset, workers, batches, batch) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # workers started, first batch out: steady state from here
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def make_folder(root: Path, classes: int, per_class: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                smooth = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
                big = Image.fromarray(smooth).resize((500, 375), Image.BICUBIC)  # ImageNet-like
                big.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", type=int, nargs=3, default=[16, 32, 32])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    config = recipe(args.widths, args.batch, args.steps, args.precision, args.device)
    ratios, rates = [], []
    for i in range(args.repeats):
        pair = (scalelab_rate(config, args.device), reference_rate(config, args.device)) \
            if i % 2 == 0 else tuple(reversed((reference_rate(config, args.device),
                                               scalelab_rate(config, args.device))))
        rates.append(pair)
        ratios.append(pair[0] / pair[1])
        print(f"  airbench repeat {i + 1}: scalelab {pair[0]:.0f} img/s, "
              f"reference {pair[1]:.0f} img/s, ratio {ratios[-1]:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp), classes=4, per_class=150)
        folder_ratios, per_worker = [], []
        for i in range(args.repeats):
            ours = scalelab_folder_rate(root, args.workers, 224, 8, 32)
            plain = plain_folder_rate(root / "train", args.workers, 224, 8, 32)
            folder_ratios.append(ours / plain)
            per_worker.append(ours / max(1, args.workers))
            print(f"  folder repeat {i + 1}: scalelab {ours:.0f} img/s, plain {plain:.0f} "
                  f"img/s, ratio {ours / plain:.3f}", flush=True)
    report("airbench_images_per_s_over_reference", median(ratios), ">= 1.0",
           device=args.device, widths=args.widths, batch=args.batch, precision=args.precision,
           scalelab_images_per_s=round(median(r[0] for r in rates)),
           reference_images_per_s=round(median(r[1] for r in rates)),
           ratios=[round(r, 4) for r in ratios],
           folder_images_per_s_over_plain=round(median(folder_ratios), 4),
           folder_goal=">= 1.0", folder_ratios=[round(r, 4) for r in folder_ratios],
           folder_images_per_s_per_worker=round(median(per_worker), 1),
           folder_workers=args.workers)


if __name__ == "__main__":
    main()
