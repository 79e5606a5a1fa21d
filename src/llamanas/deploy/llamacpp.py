"""llama.cpp as a runtime for exported GGUF files (through the ``llama-cpp-python`` binding).

``LlamaCpp(path)`` loads a file; ``logits(tokens)`` gives next-token logits (for parity checks against
the HF sub-network and for evaluation); ``tokenize(text)`` uses the file's own tokenizer.
``time_gguf(path)`` measures prefill and decode speed at batch 1 (warm-up, then the median of repeats),
the file size and the peak resident memory, by default in a fresh subprocess so that the memory figure is
llama.cpp's and not that of the calling process (which may hold torch and a model).

The binding is an optional dependency: ``pip install 'llamanas[llamacpp]'`` (or ``make llamacpp``).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llamanas.errors import LlamanasError

INSTALL_HINT = "pip install 'llamanas[llamacpp]' (the llama-cpp-python binding; or: make llamacpp)"


def binding():
    """The ``llama_cpp`` module, or a clear error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise LlamanasError(
            f"llama.cpp runtime not available ({e}); install it with: {INSTALL_HINT}"
        ) from None
    return llama_cpp


def available() -> bool:
    try:
        binding()
    except LlamanasError:
        return False
    return True


class LlamaCpp:
    """One GGUF file loaded in llama.cpp (CPU), evaluated one sequence at a time."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 512,
        n_threads: int | None = None,
        all_logits: bool = False,
        vocab_only: bool = False,
        f32_cache: bool = False,
    ):
        llama_cpp = binding()
        p = Path(path)
        if not p.is_file():
            raise LlamanasError(f"GGUF file {str(path)!r} does not exist.")
        self.path = p
        self.all_logits = all_logits
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(p),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=n_threads or os.cpu_count() or 1,
                n_threads_batch=n_threads or os.cpu_count() or 1,
                logits_all=all_logits,
                vocab_only=vocab_only,
                n_gpu_layers=0,
                # llama.cpp keeps K/V in F16 by default; F32 isolates the weights' precision in parity checks.
                type_k=0 if f32_cache else None,
                type_v=0 if f32_cache else None,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - the binding raises ValueError/RuntimeError with one line
            raise LlamanasError(f"llama.cpp cannot load {str(p)!r}: {e}") from None
        self._llama_cpp = llama_cpp

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def _last_logits(self) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits after ``tokens`` (from an empty context): [n_vocab], or [len(tokens), n_vocab] when the
        model was loaded with ``all_logits=True``."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise LlamanasError("logits() needs at least one token.")
        if len(tokens) > self.llm.n_ctx():
            raise LlamanasError(
                f"{len(tokens)} tokens exceed the context of {self.llm.n_ctx()}; raise n_ctx."
            )
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise LlamanasError(f"Token ids {bad[:5]} are outside the vocabulary (0..{self.n_vocab - 1}).")
        self.llm.reset()
        self.llm.eval(tokens)
        if self.all_logits:
            return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)
        return self._last_logits()

    def greedy(self, tokens: list[int], n_new: int) -> list[int]:
        """``n_new`` greedy tokens after ``tokens``, one decode step each."""
        self.llm.reset()
        self.llm.eval([int(t) for t in tokens])
        out = []
        for _ in range(n_new):
            nxt = int(np.argmax(self._last_logits()))
            out.append(nxt)
            self.llm.eval([nxt])
        return out


@dataclass(frozen=True)
class Timing:
    """Batch-1 speed of a GGUF file in llama.cpp on this machine's CPU."""

    path: str
    file_bytes: int
    prompt_tokens: int
    decode_tokens: int
    threads: int
    repeats: int
    prefill_tokens_per_s: float  # median over repeats
    decode_tokens_per_s: float  # median over repeats
    peak_rss_bytes: int  # of the process that ran llama.cpp (a fresh one unless in_process=True)
    in_process: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _time_core(path: str, prompt_tokens: int, decode_tokens: int, repeats: int, threads: int) -> dict:
    """The timing loop. Self-contained (imports only llama_cpp, numpy and the standard library) because
    ``time_gguf`` runs its source in a fresh interpreter that must not load torch."""
    import resource
    import statistics
    import time

    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=prompt_tokens + decode_tokens + 8,
        n_batch=prompt_tokens,
        n_ubatch=prompt_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    rng = np.random.default_rng(0)
    # Random ids past the first ones avoid the control tokens at the start of most vocabularies.
    prompt = [int(t) for t in rng.integers(min(300, n_vocab // 2), n_vocab, prompt_tokens)]
    prefill, decode = [], []
    for r in range(repeats + 1):  # the first round warms up caches and thread pools, not counted
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        nxt = last()
        t2 = time.perf_counter()
        for _ in range(decode_tokens):
            llm.eval([nxt])
            nxt = last()
        t3 = time.perf_counter()
        if r:
            prefill.append(prompt_tokens / (t1 - t0))
            decode.append(decode_tokens / (t3 - t2))
    # VmHWM is this process image's own peak; ru_maxrss would keep the parent's peak across fork + exec.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return dict(
        prefill_tokens_per_s=statistics.median(prefill),
        decode_tokens_per_s=statistics.median(decode),
        peak_rss_bytes=peak,
    )


def time_gguf(
    path: str | Path,
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    repeats: int = 5,
    threads: int | None = None,
    in_process: bool = False,
    timeout_s: float = 600,
) -> Timing:
    """Prefill and decode tokens/s at batch 1 (median of ``repeats`` after one warm-up round), the file's
    size and the peak RSS. By default it runs in a fresh Python subprocess, so the RSS is llama.cpp's (plus
    the interpreter's), not the caller's."""
    p = Path(path)
    if not p.is_file():
        raise LlamanasError(f"GGUF file {str(path)!r} does not exist.")
    if prompt_tokens < 1 or decode_tokens < 1 or repeats < 1:
        raise LlamanasError("prompt_tokens, decode_tokens and repeats must be >= 1.")
    threads = threads or os.cpu_count() or 1
    args = [str(p), prompt_tokens, decode_tokens, repeats, threads]
    binding()  # fail here, with the install hint, rather than in the child
    if in_process:
        res = _time_core(*args)
    else:
        script = (
            "import json, sys\n"
            + inspect.getsource(_time_core)
            + "\nprint(json.dumps(_time_core(*json.loads(sys.argv[1]))))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise LlamanasError(f"llama.cpp timing of {str(p)!r} failed: {tail[0]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    return Timing(
        path=str(p),
        file_bytes=p.stat().st_size,
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        threads=threads,
        repeats=repeats,
        in_process=in_process,
        **res,
    )
