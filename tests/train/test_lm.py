"""Language models: tokenizers, corpora and shards, the GPT family, the LM trainer, torchrun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scalelab.errors import ScalelabError, StudyError
from scalelab.models import non_embedding_parameters
from scalelab.models.flops import count_flops
from scalelab.models.gpt import GPT, Rotary
from scalelab.plugin import instantiate
from scalelab.registry import models, tasks
from scalelab.spec import validate_study
from scalelab.store import Store
from scalelab.tasks.text import (
    ByteTokenizer,
    CharTokenizer,
    read_shard,
    split_documents,
    write_shard,
)
from scalelab.train import COMPLETED, train_run

TEXT = "Ünïcode bytes: naïve café — 3 × 4 = 12\nsecond line\n"


def gpt(**settings):
    return instantiate(models, {"name": "gpt", **settings})


# ---------------------------------------------------------------------------- tokenizers


def test_byte_and_char_tokenizers_round_trip():
    byte = ByteTokenizer()
    ids = byte.encode(TEXT)
    assert ids.max() < 256 and len(ids) == len(TEXT.encode("utf-8"))
    assert byte.decode(ids) == TEXT
    char = CharTokenizer(TEXT)
    assert char.vocab_size == len(set(TEXT))
    assert len(char.encode(TEXT)) == len(TEXT) and char.decode(char.encode(TEXT)) == TEXT


def test_gpt2_tokenizer_without_tiktoken_says_what_to_do():
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(ScalelabError, match=r"tokenizer gpt2 needs the tiktoken package"):
            instantiate(tasks, {"name": "text", "tokenizer": "gpt2"}).load()
    else:
        pytest.skip("tiktoken is installed")


# -------------------------------------------------------------------------------- shards


def test_shard_header_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7])
    write_shard(tmp_path / "a.bin", tokens)
    raw = (tmp_path / "a.bin").read_bytes()
    header = np.frombuffer(raw[:1024], dtype=np.int32)
    assert header[:3].tolist() == [20240520, 1, 5] and len(raw) == 1024 + 2 * 5
    assert read_shard(tmp_path / "a.bin").tolist() == tokens.tolist()


def test_corrupt_and_truncated_shards_are_rejected(tmp_path):
    write_shard(tmp_path / "ok.bin", np.arange(100))
    raw = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-10])
    with pytest.raises(ScalelabError, match=r"short.bin: truncated or corrupt shard \(header says "
                                            r"100 tokens, the file holds 95\)"):
        read_shard(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(b"\x00" * 4 + raw[4:])
    with pytest.raises(ScalelabError, match=r"magic.bin: not a token shard \(magic number 0"):
        read_shard(tmp_path / "magic.bin")
    (tmp_path / "tiny.bin").write_bytes(raw[:100])
    with pytest.raises(ScalelabError, match="shorter than its 1024-byte header"):
        read_shard(tmp_path / "tiny.bin")


def test_shard_task_trains_on_train_shards_and_holds_out_val(tmp_path):
    write_shard(tmp_path / "data_train_000001.bin", np.arange(300) % 50)
    write_shard(tmp_path / "data_train_000002.bin", np.arange(200) % 50)
    write_shard(tmp_path / "data_val_000000.bin", np.arange(100) % 50)
    data = instantiate(tasks, {"name": "text", "source": "shards", "path": str(tmp_path),
                               "vocab_size": 50}).load()
    assert len(data.train) == 500 and len(data.val) == 50 and len(data.test) == 50
    assert data.vocab_size == 50 and data.bytes_per_token["val"] is None
    with pytest.raises(ScalelabError, match="at or above vocab_size 40"):
        instantiate(tasks, {"name": "text", "source": "shards", "path": str(tmp_path),
                            "vocab_size": 40}).load()
    with pytest.raises(ScalelabError, match=r"no \.bin token shards at .*nowhere"):
        instantiate(tasks, {"name": "text", "source": "shards",
                            "path": str(tmp_path / "nowhere")}).load()


# ------------------------------------------------------------------------------- corpora


def test_text_files_split_by_document_deterministically(tmp_path):
    for i in range(30):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " * (20 + i) + "\n")
    settings = {"name": "text", "source": "files", "path": str(tmp_path),
                "val_fraction": 0.2, "test_fraction": 0.2}
    first = instantiate(tasks, settings).load()
    again = instantiate(tasks, settings).load()
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    decode = ByteTokenizer().decode
    val_docs = {d for d in decode(first.val).split("\n") if d}
    train_docs = {d for d in decode(first.train).split("\n") if d}
    test_docs = {d for d in decode(first.test).split("\n") if d}
    assert val_docs and test_docs and not (val_docs & train_docs) and not (test_docs & train_docs)
    assert first.bytes_per_token == {"train": 1.0, "val": 1.0, "test": 1.0}


def test_split_fills_each_share_and_depends_on_seed():
    docs = [(f"d{i}", "x" * 100) for i in range(100)]
    splits = split_documents(docs, 0.1, 0.05, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [85, 10, 5]
    other = split_documents([(f"d{i}", f"{i:03d}" * 33) for i in range(100)], 0.1, 0.05, seed=1)
    same_seed = split_documents([(f"d{i}", f"{i:03d}" * 33) for i in range(100)], 0.1, 0.05, 0)
    assert other["val"] != same_seed["val"]


def test_missing_text_path_is_a_clear_error(tmp_path):
    with pytest.raises(ScalelabError, match=r"task.path: .*absent.txt does not exist"):
        instantiate(tasks, {"name": "text", "source": "files",
                            "path": str(tmp_path / "absent.txt")}).load()


def test_builtin_corpora_and_char_tokenizer():
    data = instantiate(tasks, {"name": "text", "tokenizer": "char"}).load()
    assert 50 < data.vocab_size < 200 and data.bytes_per_token["train"] >= 1.0
    num = instantiate(tasks, {"name": "text", "num_train_tokens": 1000}).load()
    assert len(num.train) == 1000
    with pytest.raises(ScalelabError, match="num_train_tokens: 100000000 exceeds"):
        instantiate(tasks, {"name": "text", "num_train_tokens": 10**8}).load()


# ---------------------------------------------------------------------------------- GPT


@pytest.mark.parametrize("options", [
    {},
    {"positions": "rotary", "qk_norm": True, "norm": "rmsnorm", "activation": "relu2"},
    {"zero_init_proj": True, "tied_embeddings": False},
])
def test_attention_is_causal(options):
    torch.manual_seed(0)
    model = gpt(d_model=32, n_layers=2, n_heads=4, context_length=16, **options).build((), 50)
    if options.get("zero_init_proj"):  # give the zero projections weights so attention matters
        for p in model.parameters():
            p.data += 0.02 * torch.randn_like(p)
    idx = torch.randint(0, 50, (2, 16))
    logits = model(idx)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50
    after = model(changed)
    assert torch.allclose(logits[:, :10], after[:, :10], atol=1e-6)
    assert not torch.allclose(logits[:, 10:], after[:, 10:], atol=1e-4)


def test_rotary_rotates_pairs_and_scores_depend_on_offset_only():
    rope = Rotary(8, 32, 10_000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    at = lambda x, pos: rope(x.expand(1, 1, 32, 8))[0, 0, pos]  # noqa: E731
    assert rope(torch.randn(2, 4, 32, 8)).shape == (2, 4, 32, 8)
    assert torch.allclose(at(q, 5).norm(), q.norm(), atol=1e-5)
    assert torch.allclose(at(q, 7) @ at(k, 3), at(q, 14) @ at(k, 10), atol=1e-4)


def test_qk_norm_gives_unit_rms_queries():
    model = gpt(d_model=32, n_heads=4, qk_norm=True, context_length=8).build((), 20)
    seen = {}
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen["q"], seen["k"] = q, k
        return real(q, k, v, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        model(torch.randint(0, 20, (2, 8)))
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    assert seen["q"].shape == (2, 4, 8, 8)
    rms = seen["q"].pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_parameter_counts_match_a_hand_count(tied, positions):
    d, layers, vocab, ctx = 16, 3, 40, 12
    model = gpt(d_model=d, n_layers=layers, n_heads=2, context_length=ctx, positions=positions,
                tied_embeddings=tied, norm="layernorm").build((), vocab)
    per_block = 3 * d * d + d * d + 4 * d * d + 4 * d * d + 2 * (2 * d)  # qkv, proj, mlp, 2 LNs
    body = layers * per_block + 2 * d  # final LayerNorm
    embed = vocab * d + (ctx * d if positions == "learned" else 0)
    head = 0 if tied else vocab * d
    assert non_embedding_parameters(model) == body + head
    assert sum(p.numel() for p in model.parameters()) == body + head + embed


def test_attention_flops_are_counted_on_the_cpu():
    model = gpt(d_model=16, n_layers=1, n_heads=2, context_length=8, mlp_ratio=4).build((), 10)
    flops = count_flops(lambda: model(torch.zeros(3, 8, dtype=torch.long)))
    tokens, d = 3 * 8, 16
    linear = 2 * tokens * (3 * d * d + d * d + 8 * d * d + d * 10)
    attention = 2 * 2 * 3 * 2 * 8 * 8 * 8  # QK^T and AV: 2 matmuls of B*H*T*T*head_dim
    assert flops == linear + attention


def test_config_checks_heads_and_rotary():
    with pytest.raises(ValueError, match="n_heads 3 must divide d_model 32"):
        GPT.Config(d_model=32, n_heads=3)
    with pytest.raises(ValueError, match="even head size"):
        GPT.Config(d_model=12, n_heads=4, positions="rotary")


# ------------------------------------------------------------------------------ training

LM_STUDY = {
    "name": "lm",
    "task": {"name": "text", "max_eval_tokens": 2048},
    "model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
    "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 8, "max_steps": 20,
              "eval_every": 10, "eval_train_samples": 2048},
    "seeds": [0],
}


def lm_config(**train):
    spec = {**LM_STUDY, "train": {**LM_STUDY["train"], **train}}
    return validate_study(spec).runs[0].config


def test_lm_run_reports_perplexity_bits_per_byte_and_both_flop_counts():
    result = train_run(lm_config())
    m = result.metrics
    assert result.status == COMPLETED, result.error
    assert m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]))
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2))  # bytes: 1 per token
    assert m["tokens_seen"] == 20 * 8 * 16 and m["steps"] == 20
    assert m["train_flops_6nd"] == 6 * m["n_params_nonembed"] * m["tokens_seen"]
    assert m["train_flops"] == 20 * m["flops_per_step"] > m["train_flops_6nd"] / 2
    assert m["val_loss"] < math.log(256)  # it learned something
    again = train_run(lm_config())
    assert again.metrics["test_loss"] == m["test_loss"]  # same seed, same result on the CPU
    assert [c for c in result.curves if c[1] == "train_loss"] == \
        [c for c in again.curves if c[1] == "train_loss"]


def test_muon_and_bf16_train_a_language_model():
    result = train_run(lm_config(optimizer="muon", muon_lr=0.02, precision="bf16"))
    assert result.status == COMPLETED, result.error
    assert result.metrics["val_loss"] < math.log(256)


def test_a_gpt_on_a_classification_task_is_a_study_error():
    spec = {**LM_STUDY, "task": {"name": "mnist1d"}}
    with pytest.raises(StudyError, match="model.name: model gpt learns language data; task "
                                         "mnist1d provides classification data"):
        validate_study(spec, "s.yaml")


def _curves(out: Path) -> dict[str, list[float]]:
    with Store.open(out) as store:
        rows = store.curves()
    series: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        series.setdefault(r["name"], []).append(r["value"])
    return series


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 CPU ranks (gloo), each reading half of every global batch, take the same steps as
    one process: loss curves agree to 1e-4 relative (only reduction order differs)."""
    study = tmp_path / "lm.yaml"
    study.write_text(yaml.safe_dump({**LM_STUDY, "train": {**LM_STUDY["train"], "max_steps": 30}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "scalelab", "run", str(study), "--out",
                             str(tmp_path / "one"), "--workers", "1", "--device", "cpu",
                             "--no-report", "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "scalelab", "run", str(study), "--out",
                            str(tmp_path / "two"), "--device", "cpu", "--no-report",
                            "--format", "json"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert json.loads(multi.stdout)["trained"] == {"completed": 1}
    with Store.open(tmp_path / "two") as store:
        (record,) = store.records()
    assert record["world_size"] == 2
    one, two = _curves(tmp_path / "one"), _curves(tmp_path / "two")
    for name in ("train_loss", "val_loss"):
        assert len(one[name]) == len(two[name]) == 3
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4)


@pytest.mark.slow
def test_lm_scaling_quick_study_writes_the_perplexity_fit(tmp_path):
    import scalelab

    study = Path(__file__).resolve().parents[2] / "studies" / "lm_scaling.yaml"
    result = scalelab.run(study, quick=True, out=tmp_path, device="cpu",
                          overrides=["train.max_steps=40", "train.eval_every=20"])
    assert result.ok and sum(result.trained.values()) == 4
    report = scalelab.api.report(tmp_path, n_resamples=50)
    text = report.markdown.read_text()
    assert "### test_ppl vs n_params_nonembed, form power\n" in text
    assert "### test_ppl vs n_params_nonembed, form power_offset\n" in text
    assert "test perplexity vs d_model" in text and "test perplexity vs n_layers" in text
