"""Training tokens per second: scalelab's GPT trainer vs a minimal hand-written GPT loop.

Both train the same shape (GPT-2 style: learned positions, LayerNorm, GELU, tied embeddings,
no biases) with AdamW at the same batch on the same byte-level pydocs tokens, in one process,
in alternation. scalelab's side is the real trainer (``train_run``) with evaluation only at
the end; each side's tokens per second is timed over its training loop alone (scalelab's own
``tokens_per_second`` excludes evaluation; the hand-written loop has none). The figure is the
median of scalelab / hand-written tokens per second. Goal: >= 1.0. With a GPU it also
reports scalelab's model FLOPs utilisation (counted FLOPs per second / bf16 dense peak).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, report  # noqa: E402

from scalelab.plugin import instantiate  # noqa: E402
from scalelab.registry import tasks  # noqa: E402
from scalelab.spec import validate_study  # noqa: E402
from scalelab.train import train_run  # noqa: E402

#: bf16 dense tensor-core peaks (FLOP/s) of GPUs we know, for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class MinimalGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def hand_written(shape: dict, steps: int, device: str, bf16: bool) -> float:
    """Tokens per second of a nanoGPT-style loop (get_batch by slicing, AdamW, zero_grad)."""
    data = instantiate(tasks, {"name": "text"}).load().train.to(device)
    torch.manual_seed(0)
    model = MinimalGPT(256, shape["d_model"], shape["n_layers"], shape["n_heads"],
                       shape["context_length"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    batch, ctx = shape["batch"], shape["context_length"]
    g = torch.Generator().manual_seed(0)

    def step():
        ix = torch.randint(len(data) - ctx, (batch,), generator=g)
        x = torch.stack([data[i:i + ctx] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + ctx] for i in ix])
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up, as scalelab's FLOP count is one untimed step
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch * ctx / (time.perf_counter() - start)


def scalelab_side(shape: dict, steps: int, device: str, bf16: bool) -> dict:
    config = validate_study({
        "name": "lm_bench",
        "task": {"name": "text", "max_eval_tokens": 4 * shape["context_length"] + 1},
        "model": {"name": "gpt", "d_model": shape["d_model"], "n_layers": shape["n_layers"],
                  "n_heads": shape["n_heads"], "context_length": shape["context_length"]},
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": shape["batch"],
                  "max_steps": steps, "eval_every": steps, "schedule": "constant",
                  "eval_train_samples": 4 * shape["context_length"] + 1,
                  "precision": "bf16" if bf16 else "fp32"},
    }, "lm_bench").runs[0].config
    result = train_run(config, device)
    if result.error:
        raise RuntimeError(result.error)
    return result.metrics


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    # CPU: the bundled study's largest model; GPU: GPT-2 small's shape at a 1,024 context.
    shape = ({"d_model": 768, "n_layers": 12, "n_heads": 12, "context_length": 1024, "batch": 16}
             if gpu else
             {"d_model": 128, "n_layers": 4, "n_heads": 4, "context_length": 64, "batch": 16})
    steps = args.steps or (100 if gpu else 150)
    print(f"shape {shape}, {steps} steps, device {args.device}, bf16 {gpu}", flush=True)
    ratios, metrics = [], {}
    for i in range(args.repeats):
        first_scalelab = i % 2 == 1
        if first_scalelab:
            metrics = scalelab_side(shape, steps, args.device, gpu)
        plain = hand_written(shape, steps, args.device, gpu)
        if not first_scalelab:
            metrics = scalelab_side(shape, steps, args.device, gpu)
        ours = metrics["tokens_per_second"]
        ratios.append(ours / plain)
        print(f"  repeat {i + 1}: scalelab {ours:,.0f} tok/s, hand-written {plain:,.0f} tok/s, "
              f"ratio {ours / plain:.3f}", flush=True)
    extra = {"shape": shape, "steps": steps, "device": args.device,
             "ratios": [round(r, 4) for r in ratios]}
    if gpu:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        flops_per_second = metrics["flops_per_step"] / metrics["tokens_per_step"] * \
            metrics["tokens_per_second"]
        extra["model_flops_per_second"] = flops_per_second
        extra["mfu"] = round(flops_per_second / peak, 4) if peak else None
        extra["mfu_6nd"] = round(6 * metrics["n_params_nonembed"] * metrics["tokens_per_second"]
                                 / peak, 4) if peak else None
    report("lm_tokens_per_second_ratio", median(ratios), ">= 1.0", **extra)
    if math.isnan(median(ratios)):
        sys.exit(1)


if __name__ == "__main__":
    main()
