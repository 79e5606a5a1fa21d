"""Shared fixtures: tiny random LLaMA-family models built in the test (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILY_KW = {
    "llama": dict(attention_bias=False),
    "mistral": dict(sliding_window=None),
    "qwen2": dict(),
}


def arc_available() -> bool:
    """Whether ARC-Easy's validation split loads (offline copy or hub): tests on real task data skip without it."""
    try:
        from llamanas.evaluation.tasks import load_docs

        return len(load_docs("arc_easy", "validation")) > 0
    except Exception:  # noqa: BLE001 - any missing data source means: skip
        return False


def tiny_arch(num_layers: int = 6, **kw):
    """The dimensions of a tiny model (64 hidden, MLP 256, 4 heads in 2 KV groups), for tests of the
    search space, objectives, predictors and search that need no weights."""
    from llamanas.model.arch import Arch

    dims = dict(
        num_layers=num_layers,
        hidden_size=64,
        intermediate_size=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=1000,
        tie_word_embeddings=True,
    )
    return Arch(**{**dims, **kw})


def tiny_model(
    family: str = "llama",
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv: int = 2,
    inter: int = 96,
    seed: int = 0,
):
    """A random model of ``family`` small enough to run in milliseconds."""
    import transformers

    from llamanas.model.families import FAMILIES

    fam = FAMILIES[family]
    config_cls, model_cls = getattr(transformers, fam.config_class), getattr(transformers, fam.model_class)
    config = config_cls(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=256,
        tie_word_embeddings=family == "llama",
        **FAMILY_KW[family],
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init gives near-zero attention/MLP outputs; larger weights make slicing errors visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif p.dim() == 1 and p.numel() != hidden:
                p.normal_(0, 0.2)  # biases
    return model


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def family(request):
    return request.param


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (2, 16), generator=g)


def tiny_tokenizer():
    """A word-level tokenizer over a 128-token vocabulary, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(126)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny llama model folder with a tokenizer, as a user would pass with --model."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
