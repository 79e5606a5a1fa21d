"""The tokenizer of a GGUF export: which source a model's tokenizer comes from, and its GGUF fields.

The default model (and everything made from it) copies the ``tokenizer.*`` fields of its original GGUF file,
so llama.cpp tokenizes exactly as it does for the original (the ``smollm`` pre-tokenizer included); other
models write a byte-level BPE ``tokenizer.json`` as GGUF fields, as ``convert_hf_to_gguf.py`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamanas.deploy.extract import read_extracted_meta
from llamanas.errors import LlamanasError
from llamanas.model.load import DEFAULT_MODEL, default_gguf_path, resolve
from llamanas.supernet.elastic import supernet_source


def _copy_tokenizer_from_gguf(writer, path: Path) -> int:
    """Copy every ``tokenizer.*`` field of a GGUF file; returns its number of tokens."""
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    reader = gguf.GGUFReader(path)
    n = 0
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = f.contents()
        main = f.types[0]
        sub = f.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, main, sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n = len(value)
    if not n:
        raise LlamanasError(f"GGUF file {str(path)!r} has no tokenizer (no tokenizer.ggml.tokens).")
    return n


def _hf_bpe_tokenizer(writer, folder: Path, pre: str) -> int:
    """A GPT-2-style byte-level BPE ``tokenizer.json`` as GGUF tokenizer fields; returns the token count."""
    import gguf  # lazy: the gguf library is needed only to write or read a GGUF file

    tj = folder / "tokenizer.json"
    if not tj.is_file():
        raise LlamanasError(
            f"Tokenizer folder {str(folder)!r} has no tokenizer.json; allowed: a byte-level BPE tokenizer.json "
            "folder, a .gguf file to copy the tokenizer from, or 'default'."
        )
    data = json.loads(tj.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise LlamanasError(
            f"Tokenizer in {str(folder)!r} is not a byte-level BPE (model {model.get('type')!r}, decoder "
            f"{decoder.get('type')!r}); pass a .gguf file whose tokenizer to copy instead."
        )
    vocab: dict[str, int] = dict(model["vocab"])
    types: dict[int, int] = {}
    for tok in data.get("added_tokens") or []:
        vocab[tok["content"]] = tok["id"]
        types[tok["id"]] = int(gguf.TokenType.CONTROL if tok.get("special") else gguf.TokenType.USER_DEFINED)
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    token_types = [int(gguf.TokenType.UNUSED)] * n
    for text, i in vocab.items():
        tokens[i] = text
        token_types[i] = types.get(i, int(gguf.TokenType.NORMAL))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n)
    special.add_to_gguf(writer, quiet=True)
    return n


def write_tokenizer(writer, source, pre: str) -> int:
    """Write ``source``'s tokenizer ('default', a .gguf file, or an HF byte-level BPE folder) as GGUF fields;
    returns its number of tokens."""
    if source is None:
        raise LlamanasError(
            "export_gguf needs a tokenizer source: 'default', a .gguf file, or an HF tokenizer folder."
        )
    if str(source) == "default":
        return _copy_tokenizer_from_gguf(writer, default_gguf_path())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _copy_tokenizer_from_gguf(writer, path)
    if path.is_dir():
        return _hf_bpe_tokenizer(writer, path, pre)
    raise LlamanasError(
        f"Tokenizer source {str(source)!r} not found; allowed: 'default', a .gguf file, or an HF tokenizer folder."
    )


def tokenizer_source_for(model: str) -> str | None:
    """The tokenizer source ``export_gguf`` should use for a ``--model`` name: ``"default"`` for the default
    model and for super-networks / extracted checkpoints made from it (its original GGUF tokenizer, with
    llama.cpp's ``smollm`` pre-tokenizer), the local folder otherwise, None for a hub id (the caller then
    saves the loaded tokenizer to a folder)."""
    if model == DEFAULT_MODEL:
        return "default"
    path = Path(resolve(model))
    if not path.is_dir():
        return None
    # The model a super-network was fine-tuned from, or a sub-network extracted from (each file's reader).
    for source in (supernet_source(path), read_extracted_meta(path).get("source_model")):
        if source == DEFAULT_MODEL:
            return "default"
        if isinstance(source, str) and source != model:
            try:
                if tokenizer_source_for(source) == "default":
                    return "default"
            except LlamanasError:
                pass
    return str(path)
