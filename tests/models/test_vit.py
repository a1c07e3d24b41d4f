"""ViT: independent blocks, torchvision's initialisation, ViT-B/16's size, pre-LN numerics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalelab.models.vit import ViT
from scalelab.plugin import instantiate
from scalelab.registry import models


def build(input_shape=(3, 32, 32), classes=10, **settings):
    return instantiate(models, {"name": "vit", **settings}).build(input_shape, classes)


SMALL = {"patch_size": 4, "depth": 4, "width": 64, "heads": 4}


def test_the_config_and_so_the_run_ids_are_unchanged():
    assert ViT.Config().model_dump() == {
        "preset": "none", "patch_size": 4, "depth": 6, "width": 192, "heads": 3,
        "mlp_ratio": 4.0, "dropout": 0.0}


def test_vit_b16_has_torchvisions_parameter_count():
    with torch.device("meta"):  # 86.6M parameters: the count needs no memory
        model = build((3, 224, 224), 1000, preset="vit_b16")
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # torchvision's vit_b_16


def test_no_two_blocks_start_alike():
    torch.manual_seed(0)
    blocks = build(**SMALL).blocks.layers
    assert len(blocks) == 4
    for a, b in itertools.combinations(blocks, 2):
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            if "norm" in name or name.endswith("in_proj_bias") or name.endswith(".bias"):
                continue  # LayerNorm (1, 0) and zero biases start equal by design
            assert pa is not pb and not torch.equal(pa, pb), name


def test_initialisation_follows_torchvision():
    torch.manual_seed(0)
    model = build(**SMALL)
    width, hidden, fan_in = 64, 256, 3 * 4 * 4
    # patch stem: trunc_normal std sqrt(1 / fan_in), zero bias
    assert model.patches.weight.std().item() == pytest.approx(math.sqrt(1 / fan_in), rel=0.05)
    assert torch.count_nonzero(model.patches.bias) == 0
    assert torch.count_nonzero(model.cls) == 0
    assert model.position.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.head.weight) == torch.count_nonzero(model.head.bias) == 0
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 4 + 1 and all(m.eps == 1e-6 for m in norms)
    for block in model.blocks.layers:
        for linear, (fi, fo) in ((block.linear1, (width, hidden)), (block.linear2, (hidden, width))):
            bound = math.sqrt(6 / (fi + fo))  # xavier_uniform
            w = linear.weight
            assert w.abs().max().item() <= bound
            assert w.abs().max().item() >= 0.99 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
            # biases normal with std 1e-6
            assert linear.bias.abs().max().item() < 1e-5
            assert linear.bias.std().item() == pytest.approx(1e-6, rel=0.3)


def test_forward_is_the_pre_norm_gelu_transformer():
    torch.manual_seed(0)
    model = build(**SMALL).eval()
    nn.init.normal_(model.head.weight)  # a zero head would compare zeros
    x = torch.randn(3, 3, 32, 32)
    tokens = model.patches(x).flatten(2).transpose(1, 2)
    h = torch.cat([model.cls.expand(3, -1, -1), tokens], 1) + model.position
    for b in model.blocks.layers:
        a = F.layer_norm(h, (64,), b.norm1.weight, b.norm1.bias, 1e-6)
        h = h + F.multi_head_attention_forward(
            a.transpose(0, 1), a.transpose(0, 1), a.transpose(0, 1), 64, 4,
            b.self_attn.in_proj_weight, b.self_attn.in_proj_bias, None, None, False, 0.0,
            b.self_attn.out_proj.weight, b.self_attn.out_proj.bias, training=False,
            need_weights=False)[0].transpose(0, 1)
        m = F.layer_norm(h, (64,), b.norm2.weight, b.norm2.bias, 1e-6)
        h = h + b.linear2(F.gelu(b.linear1(m)))
    expected = model.head(F.layer_norm(h[:, 0], (64,), model.norm.weight, model.norm.bias, 1e-6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
