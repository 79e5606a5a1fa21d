"""Size and speed of a sub-network: parameters, bytes, MACs per token, latency and throughput.

Counts are analytic (``SubnetConfig.num_params``/``macs_per_token``) and equal the extracted
checkpoint's. Timings run on the extracted model (what a user deploys), with warm-up and repeats, and
report the median.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from llamanas.model.device import dtype_name
from llamanas.supernet.slicing import standalone
from llamanas.supernet.subnet import SubnetConfig


@dataclass
class Measurement:
    params: int
    params_non_embedding: int
    bytes: int
    dtype: str
    macs_per_token: int
    seq_len: int
    kv_bytes_per_token: int  # KV cache per token of context, 16-bit (0 for layers without attention)
    latency_ms: float | None = None  # prefill of ``prefill_tokens`` at batch 1, median
    latency_ms_iqr: float | None = None
    prefill_tokens: int | None = None
    throughput_tok_s: float | None = None  # greedy generation at batch 1, median
    gen_tokens: int | None = None
    gen_context: int | None = None  # prompt tokens the generation starts after (the context it decodes at)
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def count(supernet, cfg: SubnetConfig, seq_len: int = 128) -> Measurement:
    """Parameter, byte and MAC counts (no timing; microseconds)."""
    arch = supernet.arch
    dtype = next(supernet.model.parameters()).dtype
    params = cfg.num_params(arch)
    return Measurement(
        params=params,
        params_non_embedding=cfg.num_params(arch, embeddings=False),
        bytes=params * dtype.itemsize,
        dtype=dtype_name(dtype),
        macs_per_token=cfg.macs_per_token(arch, seq_len),
        seq_len=seq_len,
        kv_bytes_per_token=cfg.kv_bytes(arch),
    )


def _timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@torch.inference_mode()
def time_model(
    model,
    prefill_tokens: int = 128,
    gen_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    gen_context: int = 16,
):
    """(prefill latency ms median, its IQR, generation tokens/s median) for a standalone model; generation
    starts after a prompt of ``gen_context`` tokens (a long one times decoding at long context)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    n = max(prefill_tokens, gen_context)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g).to(device)
    prompt = ids[:, :gen_context]
    ids = ids[:, :prefill_tokens]
    lat = _timed(lambda: model(input_ids=ids, use_cache=False), warmup, repeats)
    q = statistics.quantiles(lat, n=4) if len(lat) >= 2 else [lat[0]] * 3

    def generate():
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=gen_tokens,
            min_new_tokens=gen_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    gen = _timed(generate, 1, max(1, repeats // 2))
    return 1000 * statistics.median(lat), 1000 * (q[2] - q[0]), gen_tokens / statistics.median(gen)


def measure(
    supernet,
    cfg: SubnetConfig,
    seq_len: int = 128,
    timing: bool = True,
    prefill_tokens: int = 128,
    gen_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    gen_context: int = 16,
) -> Measurement:
    """Counts, plus measured latency and throughput of the extracted sub-network when ``timing``
    (generation after a ``gen_context``-token prompt)."""
    m = count(supernet, cfg, seq_len)
    if timing:
        model = standalone(supernet, cfg)  # at its layers' bits when cfg has them
        model.generation_config.pad_token_id = 0
        lat, iqr, tps = time_model(
            model, prefill_tokens, gen_tokens, warmup, repeats, gen_context=gen_context
        )
        m.latency_ms, m.latency_ms_iqr, m.throughput_tok_s = lat, iqr, tps
        m.prefill_tokens, m.gen_tokens, m.threads = prefill_tokens, gen_tokens, torch.get_num_threads()
        m.gen_context = gen_context
        del model
    return m
