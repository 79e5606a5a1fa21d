"""Build a LLaMA-shaped model with random weights for scale tests (no download), written shard by shard.

    python bench/make_scale_model.py --shape 7b --out runs/scale/llama2-7b-shape
    python bench/make_scale_model.py --shape 1b --out runs/scale/llama-1b-shape

Shapes: ``7b`` is LLaMA-2-7B (32 layers, hidden 4096, MLP 11008, 32 heads, untied head), ``1b`` is
LLaMA-3.2-1B (16 layers, hidden 2048, MLP 8192, 32 heads in 8 KV groups, tied). Both use the default
model's tokenizer (vocabulary 49,152, so the 7B shape has 6.87B parameters, 13.7 GB in bfloat16). Weights
are N(0, 0.02) in bfloat16, norms 1; one tensor at a time is in memory, never the whole model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llamanas.model.load import resolve

SHAPES = {
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    ),
}


def build(shape: str, out: Path, shard_bytes: int = 2 * 2**30, seed: int = 0) -> Path:
    tok = AutoTokenizer.from_pretrained(resolve("default"))
    config = LlamaConfig(vocab_size=len(tok), **SHAPES[shape], rms_norm_eps=1e-5)
    config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    g = torch.Generator().manual_seed(seed)
    names = [n for n in model.state_dict() if not (config.tie_word_embeddings and n == "lm_head.weight")]
    shapes = dict(model.state_dict())
    shards: list[list[str]] = []
    shard, size = {}, 0

    def flush():
        save_file(shard, str(tmp / f"part{len(shards)}"), metadata={"format": "pt"})
        shards.append(list(shard))
        shard.clear()

    for name in names:
        meta = shapes[name]
        if name.endswith("norm.weight"):
            t = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(meta.shape, dtype=torch.float32).normal_(0, 0.02, generator=g).to(torch.bfloat16)
        if shard and size + t.numel() * 2 > shard_bytes:
            flush()
            size = 0
        shard[name] = t
        size += t.numel() * 2
    flush()
    weight_map = {}
    for i, keys in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        (tmp / f"part{i - 1}").replace(tmp / final)
        weight_map.update(dict.fromkeys(keys, final))
    total = sum(p.stat().st_size for p in tmp.glob("model-*.safetensors"))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    params = sum(t.numel() for n, t in shapes.items() if n in names)
    print(f"wrote {out}: {params:,} parameters, {total / 1e9:.2f} GB in {len(shards)} shards")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.shape, args.out, seed=args.seed)
