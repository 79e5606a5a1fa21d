"""GGUF export (llama / deci architectures) and the llama.cpp runtime.

The export is checked by reading files back with ``gguf.GGUFReader``; where the ``llama-cpp-python``
binding is installed, llama.cpp's next-token logits are compared with the HF sub-network's.

Tolerances on the tiny models (``max |logit_llama.cpp - logit_HF|`` over the HF logits' std):
- F32 weights with an F32 KV cache: both sides compute in float32, only the order of operations
  differs, so the error is float32 round-off: 1e-4 (measured 2e-6 .. 7e-6);
- F16 weights: ggml also rounds the activations to F16 before each F16 matmul (11-bit mantissa) and the
  default KV cache is F16: 3e-2 (measured 2.7e-3);
- Q8_0: weights and activations are rounded to 8 bits per block of 32 (step ~1/127 of the block's
  largest value): 0.15 (measured 7.6e-2).
On the default model (27 of 30 layers, mixed widths) F32 must agree to 1e-4 of the std at every position
with the same top-1 (measured 3.8e-5); F16 and Q8_0 (embeddings quantized too) are checked on the last
position's mean |diff| / std and top-1: 2e-2 (measured 7.1e-3) and 0.4 (measured 0.23; 27 layers of
8-bit weights and activations add up, the top-1 token still matches).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_arch

from llamanas.deploy.extract import SUBNET_FILE, read_extracted_meta
from llamanas.deploy.gguf import GGUFExport, export_gguf, export_subnet_gguf
from llamanas.deploy.gguf_tokenizer import tokenizer_source_for
from llamanas.deploy.llamacpp import available
from llamanas.errors import LlamanasError
from llamanas.supernet.elastic import supernet_source, write_supernet_meta
from llamanas.supernet.slicing import build_extracted
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig

gguf = pytest.importorskip("gguf")
needs_llamacpp = pytest.mark.skipif(not available(), reason="llama-cpp-python not installed")

HIDDEN, HEADS, KV, HEAD_DIM, INTER, LAYERS = 128, 4, 2, 32, 96, 4
TOL = {"f32": 1e-4, "f16": 3e-2, "q8_0": 0.15}
TOL_REAL = {"f16": 2e-2, "q8_0": 0.4}  # mean |diff| / std on the default model (see the module docstring)


def bpe_tokenizer():
    """A byte-level BPE tokenizer (256 byte tokens, two merges, three specials), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({"he": len(vocab), "Ġt": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e"), ("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    bpe_tokenizer().save_pretrained(path)
    return path


def model_of(family: str = "llama", vocab: int = 261, seed: int = 0, tied: bool = True):
    """A random model with dimensions llama.cpp accepts (head size 32, rows multiples of 32)."""
    from llamanas.model.families import FAMILIES

    config_cls, model_cls = FAMILIES[family].classes()
    kw = {"mistral": dict(sliding_window=None)}.get(family, {})
    config = config_cls(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        **kw,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger than the default init, so layer mistakes show in the logits
        for p in model.parameters():
            if p.dim() == 2 or p.numel() != HIDDEN:
                p.normal_(0, 0.1)
    return model


def fields(path):
    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def random_configs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, LAYERS + 1))
        layers = tuple(sorted(int(i) for i in rng.choice(LAYERS, size=k, replace=False)))
        mlp = tuple(int(rng.choice([32, 64, 96])) for _ in layers)
        kv = tuple(int(rng.integers(1, KV + 1)) for _ in layers)
        out.append(SubnetConfig(layers, mlp, kv))
    return out


NONUNIFORM = SubnetConfig((0, 2, 3), (96, 32, 64), (2, 1, 2))  # layer 1 skipped
# Layer 1 without MLP (the zero stand-in), layer 2 without attention.
BLOCKS = SubnetConfig((0, 1, 2, 3), (96, 0, 64, 32), (2, 2, 0, 1))
# A narrower residual stream (hidden size): uniform (llama) and per-layer (deci).
NARROW = SubnetConfig((0, 1, 3), (64, 64, 64), (1, 1, 1), hidden=HIDDEN - 32)
NARROW_DECI = SubnetConfig((0, 2, 3), (96, 32, 64), (2, 1, 2), hidden=HIDDEN - 32)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- export, read back --------------------------------------------------------------------------
def test_uniform_is_llama(tok_dir, tmp_path):
    model = model_of()
    out = export_gguf(model, tok_dir, tmp_path / "u.gguf", type="f32")
    assert isinstance(out, GGUFExport) and out.arch == "llama" and out.n_layers == LAYERS
    r, f = fields(out.path)
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == LAYERS and f["llama.feed_forward_length"] == INTER
    assert f["llama.attention.head_count"] == HEADS and f["llama.attention.head_count_kv"] == KV
    assert f["llama.attention.key_length"] == HEAD_DIM == f["llama.rope.dimension_count"]
    assert f["tokenizer.ggml.model"] == "gpt2" and len(f["tokenizer.ggml.tokens"]) == 261
    assert f["tokenizer.ggml.eos_token_id"] == bpe_tokenizer().eos_token_id
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("cfg", [NONUNIFORM, *random_configs(4)], ids=str)
def test_nonuniform_is_deci_with_per_layer_arrays(tok_dir, tmp_path, cfg):
    model = model_of()
    sub = build_extracted(model, cfg)
    out = export_gguf(sub, tok_dir, tmp_path / "d.gguf", type="f32", arch="deci")
    r, f = fields(out.path)
    assert f["general.architecture"] == "deci" and f["deci.block_count"] == cfg.depth
    rep = HEADS // KV
    assert f["deci.feed_forward_length"] == list(cfg.mlp)
    assert f["deci.attention.head_count_kv"] == list(cfg.kv_groups)
    assert f["deci.attention.head_count"] == [g * rep for g in cfg.kv_groups]
    assert r.fields["deci.feed_forward_length"].types[-1] == gguf.GGUFValueType.INT32
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    for b, (m, g) in enumerate(zip(cfg.mlp, cfg.kv_groups, strict=True)):
        assert shapes[f"blk.{b}.attn_q.weight"] == [HIDDEN, g * rep * HEAD_DIM]
        assert shapes[f"blk.{b}.attn_k.weight"] == [HIDDEN, g * HEAD_DIM]
        assert shapes[f"blk.{b}.attn_output.weight"] == [g * rep * HEAD_DIM, HIDDEN]
        assert shapes[f"blk.{b}.ffn_up.weight"] == [HIDDEN, m]
        assert shapes[f"blk.{b}.ffn_down.weight"] == [m, HIDDEN]
    assert f"blk.{cfg.depth}.attn_q.weight" not in shapes
    # F32 round trip: the q rows are the HF rows in llama.cpp's RoPE order.
    q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    hf_q = sub.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(unpermute(np.array(q.data), cfg.kv_groups[0] * rep), hf_q)


def test_auto_arch_and_subnet_metadata(tok_dir, tmp_path):
    model = model_of()
    uni = SubnetConfig((1, 3), (64, 64), (1, 1))
    out = export_subnet_gguf(model, uni, tok_dir, tmp_path / "a.gguf", type="f32")
    _, f = fields(out.path)
    assert out.arch == "llama" and f["llama.attention.head_count"] == HEADS // KV
    assert f["llamanas.subnet"] == uni.to_json()
    out = export_subnet_gguf(model, NONUNIFORM, tok_dir, tmp_path / "b.gguf", type="f32")
    assert out.arch == "deci"


def test_quantized_types_bits_and_fallback(tok_dir, tmp_path):
    model = model_of()
    cfg = SubnetConfig((0, 1, 2), (96, 40, 64), (2, 1, 1), bits=(16, 8, 4))
    with pytest.warns(UserWarning, match="kept in F16"):
        out = export_subnet_gguf(model, cfg, tok_dir, tmp_path / "q.gguf", type="q8_0")
    t = out.tensor_types
    assert t["token_embd.weight"] == "Q8_0" and t["blk.0.attn_norm.weight"] == "F32"
    assert t["blk.0.attn_q.weight"] == "F16" and t["blk.0.ffn_down.weight"] == "F16"
    assert t["blk.1.attn_q.weight"] == "Q8_0" and t["blk.1.ffn_up.weight"] == "Q8_0"
    assert t["blk.2.attn_v.weight"] == "Q4_0" and t["blk.2.ffn_down.weight"] == "Q4_0"
    # MLP 40 is not a multiple of 32: ffn_down's rows (length 40) cannot be Q8_0 blocks.
    assert out.fallbacks == ("blk.1.ffn_down.weight",) and t["blk.1.ffn_down.weight"] == "F16"
    r, _ = fields(out.path)
    got = {x.name: x.tensor_type.name for x in r.tensors}
    assert got == t


def test_qwen2_biases_are_written_permuted(tok_dir, tmp_path):
    model = model_of("qwen2", tied=False)
    sub = build_extracted(model, NONUNIFORM)
    out = export_gguf(sub, tok_dir, tmp_path / "b.gguf", type="f32")
    r, _ = fields(out.path)
    byname = {t.name: np.array(t.data) for t in r.tensors}
    assert "output.weight" in byname and "blk.0.attn_q.bias" in byname and "blk.2.attn_v.bias" in byname
    hf_k = sub.model.layers[1].self_attn.k_proj.bias.detach().numpy()
    np.testing.assert_array_equal(unpermute(byname["blk.1.attn_k.bias"], NONUNIFORM.kv_groups[1]), hf_k)


# --- bad input ------------------------------------------------------------------------------------
def test_refuses_existing_output_and_leaves_no_partial_file(tok_dir, tmp_path):
    model = model_of()
    path = tmp_path / "x.gguf"
    path.write_bytes(b"keep me")
    with pytest.raises(LlamanasError, match="exists; pass overwrite=True"):
        export_gguf(model, tok_dir, path)
    assert path.read_bytes() == b"keep me"
    export_gguf(model, tok_dir, path, type="f32", overwrite=True)
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == "llama"
    # An error after the writer started (vocabulary mismatch) leaves neither output nor temp file.
    with pytest.raises(LlamanasError, match="261 tokens but the model's vocabulary is 300"):
        export_gguf(model_of(vocab=300), tok_dir, tmp_path / "y.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_unsupported_configs(tok_dir, tmp_path):
    sub = build_extracted(model_of(), NONUNIFORM)
    with pytest.raises(LlamanasError, match="Layer 1 .*'llama' needs the same sizes.*arch='deci'"):
        export_gguf(sub, tok_dir, tmp_path / "a.gguf", arch="llama")
    with pytest.raises(LlamanasError, match="Unknown GGUF type 'q4_k'. Available: f32, f16, q8_0, q4_0"):
        export_gguf(sub, tok_dir, tmp_path / "a.gguf", type="q4_k")
    with pytest.raises(LlamanasError, match=r"'bits' values \[2\] have no GGUF type"):
        export_gguf(sub, tok_dir, tmp_path / "a.gguf", bits=[16, 2, 8])
    mistral = model_of("mistral")
    mistral.config.sliding_window = 64
    with pytest.raises(LlamanasError, match="sliding_window=64"):
        export_gguf(mistral, tok_dir, tmp_path / "a.gguf")
    with pytest.raises(LlamanasError, match="Tokenizer source .* not found"):
        export_gguf(sub, tmp_path / "nope", tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_refuses_quantized_modules(tok_dir, tmp_path):
    from llamanas.supernet.precision import apply_precision

    sub = build_extracted(model_of(), NONUNIFORM)
    apply_precision(sub, (8, 8, 8), 32)
    with pytest.raises(LlamanasError, match="not a float linear.*build_extracted"):
        export_gguf(sub, tok_dir, tmp_path / "a.gguf")


def test_tokenizer_source_follows_the_folder_metadata(tmp_path):
    """A super-network fine-tuned from the default model, and a sub-network extracted from it, use the
    default model's GGUF tokenizer; each folder's metadata is read through its reader."""
    folders = {}
    for name in ("supernet", "extracted", "plain", "from_plain"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "config.json").write_text("{}")
    space = SearchSpace.from_arch(tiny_arch(2))
    write_supernet_meta(folders["supernet"], space, {"args": {"model": "default"}})
    for name, source in (("extracted", "supernet"), ("from_plain", "plain")):
        (folders[name] / SUBNET_FILE).write_text(json.dumps({"source_model": str(folders[source])}))
    assert supernet_source(folders["supernet"]) == "default" and supernet_source(folders["plain"]) is None
    assert read_extracted_meta(folders["plain"]) == {}
    assert tokenizer_source_for("default") == "default"
    assert tokenizer_source_for(str(folders["supernet"])) == "default"
    assert tokenizer_source_for(str(folders["extracted"])) == "default"  # through the super-network
    for name in ("plain", "from_plain"):
        assert tokenizer_source_for(str(folders[name])) == str(folders[name])
    assert tokenizer_source_for("org/name") is None  # a hub id: the caller saves the loaded tokenizer


# --- llama.cpp parity -----------------------------------------------------------------------------
def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


PROMPT = [256, 104, 101, 108, 108, 111, 32, 259, 33, 10, 200, 7, 150, 99, 42, 3]


@needs_llamacpp
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize(
    "cfg", [None, NONUNIFORM, BLOCKS, NARROW, NARROW_DECI, *random_configs(2, seed=5)], ids=str
)
def test_llamacpp_matches_hf_f32(tok_dir, tmp_path, family, cfg):
    from llamanas.deploy.llamacpp import LlamaCpp

    model = model_of(family, tied=family == "llama")
    sub = model if cfg is None else build_extracted(model, cfg)
    out = export_gguf(sub, tok_dir, tmp_path / "m.gguf", type="f32")
    cpp = LlamaCpp(out.path, n_ctx=64, all_logits=True, f32_cache=True)
    ours, ref = cpp.logits(PROMPT), hf_logits(sub, PROMPT)
    err = rel_err(ours, ref)
    print(f"f32 {family} {cfg}: max|diff|/std = {err:.2e}")
    assert err < TOL["f32"]
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


@needs_llamacpp
@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_llamacpp_matches_hf_lower_precision(tok_dir, tmp_path, type):
    from llamanas.deploy.llamacpp import LlamaCpp

    sub = build_extracted(model_of(), NONUNIFORM)
    out = export_gguf(sub, tok_dir, tmp_path / "m.gguf", type=type)
    cpp = LlamaCpp(out.path, n_ctx=64)
    ref = hf_logits(sub, PROMPT)[-1]
    err = rel_err(cpp.logits(PROMPT), ref)
    print(f"{type}: max|diff|/std = {err:.2e}")
    assert err < TOL[type]


@needs_llamacpp
def test_llamacpp_tokenizer_matches_hf(tok_dir, tmp_path):
    from llamanas.deploy.llamacpp import LlamaCpp

    out = export_gguf(model_of(), tok_dir, tmp_path / "m.gguf", type="f32")
    cpp = LlamaCpp(out.path, vocab_only=True)
    hf = bpe_tokenizer()
    for text in ["hello there", "the cat\nsat!  ok", "Ünïcode ✓"]:
        assert cpp.tokenize(text) == hf(text, add_special_tokens=False)["input_ids"], text


@needs_llamacpp
def test_timing_runs(tok_dir, tmp_path):
    from llamanas.deploy.llamacpp import time_gguf

    out = export_gguf(build_extracted(model_of(), NONUNIFORM), tok_dir, tmp_path / "m.gguf", type="f16")
    t = time_gguf(out.path, prompt_tokens=16, decode_tokens=4, repeats=2, threads=1)
    assert t.file_bytes == out.n_bytes and t.prefill_tokens_per_s > 0 and t.decode_tokens_per_s > 0
    assert t.peak_rss_bytes > 0 and not t.in_process


def test_missing_binding_is_a_clear_error(monkeypatch):
    import builtins

    from llamanas.deploy import llamacpp

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(LlamanasError, match=r"pip install 'llamanas\[llamacpp\]'"):
        llamacpp.LlamaCpp("x.gguf")
    assert not llamacpp.available()


# --- the default model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default():
    from llamanas.model.load import load_model

    return load_model("default")


@pytest.mark.slow
def test_default_tokenizer_fields_copied(default, tmp_path):
    model, _ = default
    cfg = SubnetConfig((0, 1, 2, 29), (1536, 384, 768, 1152), (3, 1, 2, 3))
    out = export_subnet_gguf(model, cfg, "default", tmp_path / "d.gguf", type="q8_0")
    _, f = fields(out.path)
    assert f["tokenizer.ggml.pre"] == "smollm" and f["tokenizer.ggml.eos_token_id"] == 2
    assert "im_start" in f["tokenizer.chat_template"] and len(f["tokenizer.ggml.tokens"]) == 49152
    assert out.fallbacks == ()  # 576, 384, 768, 1152 and 64 are all multiples of 32


@pytest.mark.slow
@needs_llamacpp
def test_default_nonuniform_parity_and_tokenizer(default, tmp_path):
    from llamanas.deploy.llamacpp import LlamaCpp

    model, tok = default
    cfg = SubnetConfig(
        tuple(i for i in range(30) if i not in (5, 17, 23)),
        tuple([1536, 1152, 768, 384] * 7)[:27],
        tuple([3, 2, 1] * 9),
    )
    sub = build_extracted(model, cfg)
    text = (
        "<|im_start|>user\nWhich gas do plants take in for photosynthesis?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ref = hf_logits(sub, ids)
    for type in ("f32", "f16", "q8_0"):
        out = export_gguf(sub, "default", tmp_path / f"{type}.gguf", type=type)
        cpp = LlamaCpp(out.path, n_ctx=256, all_logits=type == "f32", f32_cache=type == "f32")
        if type == "f32":
            assert cpp.tokenize(text) == ids
            ours = cpp.logits(ids)
            err = rel_err(ours, ref)
            agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
            print(f"default f32: max|diff|/std = {err:.2e}, top-1 agreement {agree:.3f}")
            assert err < TOL["f32"] and agree == 1.0
        else:
            ours = cpp.logits(ids)
            err, mean = rel_err(ours, ref[-1]), float(np.abs(ours - ref[-1]).mean() / ref[-1].std())
            print(
                f"default {type}: max|diff|/std = {err:.2e}, mean {mean:.2e}, top-1 {ours.argmax()} vs {ref[-1].argmax()}"
            )
            assert mean < TOL_REAL[type] and ours.argmax() == ref[-1].argmax()


@needs_llamacpp
def test_compensation_biases_survive_gguf(tok_dir, tmp_path):
    """Bias compensation puts output biases on down_proj / o_proj; both GGUF archs load and add them."""
    from llamanas.deploy.llamacpp import LlamaCpp
    from llamanas.supernet.elastic import SuperNet

    model = model_of("llama")
    sn = SuperNet(model)
    g = torch.Generator().manual_seed(0)
    sn.compensate([torch.randint(0, 261, (4, 24), generator=g)])
    from llamanas.supernet.slicing import standalone

    sub = standalone(sn, NONUNIFORM)
    layer = sub.get_decoder().layers[0]
    assert layer.mlp.down_proj.bias is not None and layer.self_attn.o_proj.bias is not None
    out = export_gguf(sub, tok_dir, tmp_path / "c.gguf", type="f32")
    names = {t.name for t in gguf.GGUFReader(out.path).tensors}
    assert "blk.0.ffn_down.bias" in names and "blk.0.attn_output.bias" in names
    cpp = LlamaCpp(out.path, n_ctx=64, all_logits=True, f32_cache=True)
    ours, ref = cpp.logits(PROMPT), hf_logits(sub, PROMPT)
    with sn.subnet(NONUNIFORM):
        activated = hf_logits(model, PROMPT)
    np.testing.assert_allclose(ref, activated, atol=1e-4)  # extraction kept the compensation
    assert rel_err(ours, ref) < TOL["f32"]


def test_skipped_blocks_are_deci_attention_free_and_zero_mlp(tok_dir, tmp_path):
    from llamanas.deploy.gguf import NO_MLP_WIDTH

    sub = build_extracted(model_of(), BLOCKS)
    out = export_gguf(sub, tok_dir, tmp_path / "b.gguf", type="f32")
    r = gguf.GGUFReader(str(out.path))
    assert out.arch == "deci"

    def arr(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    assert arr("deci.attention.head_count") == [HEADS, HEADS, 0, HEADS // KV]
    assert arr("deci.attention.head_count_kv") == [KV, KV, 0, 1]
    assert arr("deci.feed_forward_length") == [96, NO_MLP_WIDTH, 64, 32]
    names = {t.name: t for t in r.tensors}
    assert "blk.2.attn_q.weight" not in names and "blk.2.attn_norm.weight" not in names
    assert not np.asarray(names["blk.1.ffn_down.weight"].data).any()  # the stand-in adds exactly 0
    uniform_skips = build_extracted(model_of(), SubnetConfig((0, 1), (0, 0), (2, 2)))
    with pytest.raises(LlamanasError, match="cannot skip attention or MLP"):
        export_gguf(uniform_skips, tok_dir, tmp_path / "x.gguf", arch="llama")
    first_free = build_extracted(model_of(), SubnetConfig((0, 1), (96, 96), (0, 2)))
    with pytest.raises(LlamanasError, match="first layer must keep its attention"):
        export_gguf(first_free, tok_dir, tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*y.gguf*"))
