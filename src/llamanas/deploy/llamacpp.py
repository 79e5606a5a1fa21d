"""llama.cpp as a runtime for exported GGUF files (through the ``llama-cpp-python`` binding).

``LlamaCpp(path)`` loads a file; ``logits(tokens)`` gives next-token logits (for parity checks against
the HF sub-network and for evaluation); ``tokenize(text)`` uses the file's own tokenizer.
``evaluate_gguf(path, tasks)`` scores the evaluator's lm-eval-exact tasks on a file through llama.cpp's
logits (same requests, same metrics, same ``TaskResult`` as ``evaluation.evaluate``).
``time_gguf(path)`` measures prefill and decode speed at batch 1 (warm-up, then the median of repeats),
the file size and the peak resident memory, by default in a fresh subprocess so that the memory figure is
llama.cpp's and not that of the calling process (which may hold torch and a model).

The binding is an optional dependency: ``pip install 'llamanas[llamacpp]'`` (or ``make llamacpp``).
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llamanas.deploy.gguf import read_gguf_info
from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import prepare, results_from_loglikelihoods
from llamanas.evaluation.questions import Questions

INSTALL_HINT = "pip install 'llamanas[llamacpp]' (the llama-cpp-python binding; or: make llamacpp)"


_LOG_ERROR, _LOG_CONT = 4, 5  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_log_state = {"callback": None, "last": 0}


def _quiet_logs(llama_cpp) -> None:
    """Pass only llama.cpp's errors to stderr. The binding's own callback maps the log levels of an older
    ggml, so warnings (context sizes, V-cache padding) reach the command line even with verbose=False."""
    if _log_state["callback"] is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        level = _log_state["last"] if level == _LOG_CONT else level
        _log_state["last"] = level
        if level == _LOG_ERROR:
            print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)

    _log_state["callback"] = callback  # keep a reference: llama.cpp holds only the C pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def binding():
    """The ``llama_cpp`` module, or a clear error saying how to install it."""
    try:
        import llama_cpp  # lazy: optional extra (llamanas[llamacpp]), built from source
    except ImportError as e:
        raise LlamanasError(
            f"llama.cpp runtime not available ({e}); install it with: {INSTALL_HINT}"
        ) from None
    _quiet_logs(llama_cpp)
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

    def close(self) -> None:
        """Free the model now (the binding's own finalizer can fail at interpreter exit)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

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


# --- evaluation -----------------------------------------------------------------------------------
class GGUFTokenizer:
    """A GGUF file's own tokenizer behind the part of the HF tokenizer interface the evaluator's request
    building uses (``tok(texts, add_special_tokens=...)["input_ids"]``, ``bos_token_id``,
    ``eos_token_id``, ``decode``). ``add_special_tokens`` adds what the file says (its
    ``tokenizer.ggml.add_bos_token`` / ``add_eos_token``), as an HF tokenizer adds its own; special-token
    text is parsed, as HF does."""

    def __init__(self, cpp: LlamaCpp):
        self.cpp = cpp
        bos, eos = cpp.llm.token_bos(), cpp.llm.token_eos()
        self.bos_token_id = bos if bos >= 0 else None
        self.eos_token_id = eos if eos >= 0 else None

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        one = isinstance(texts, str)
        ids = [self.cpp.tokenize(t, add_bos=add_special_tokens) for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}

    def decode(self, ids) -> str:
        ids = [int(ids)] if np.ndim(ids) == 0 else [int(i) for i in ids]
        return self.cpp.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


@dataclass
class DocRequests:
    """One document's requests, as the evaluator packed them: the choices' shared prefix, each choice's
    tokens after it, and for each choice the positions (in prefix + choice) whose next-token logits score
    its continuation tokens (``targets``)."""

    doc: int  # global document number (``Prepared.request_offsets`` index)
    prefix: list[int]
    choices: list[list[int]]
    positions: list[np.ndarray]
    targets: list[np.ndarray]

    @property
    def max_len(self) -> int:
        return len(self.prefix) + max(len(c) for c in self.choices)


def doc_requests(prepared) -> list[DocRequests]:
    """Unpack the evaluator's batches (``evaluation.evaluate.prepare``) into per-document requests.

    A packed row holds documents side by side (``docs`` slot), each as the shared prefix (segment -1)
    followed by one segment per choice whose position ids restart after the prefix; ``pred_index`` /
    ``targets`` / ``request`` say which position predicts which token of which (doc, choice).
    """
    offs = np.asarray(prepared.request_offsets)
    out: list[DocRequests | None] = [None] * prepared.n_docs
    for batch in prepared.batches:
        ids, seg = batch.input_ids.numpy(), batch.segments.numpy()
        docs, pos = batch.docs.numpy(), batch.position_ids.numpy()
        width = ids.shape[1]
        pred = batch.pred_index.numpy()
        rows, cols = pred // width, pred % width
        req, targets = batch.request.numpy(), batch.targets.numpy()
        doc_of = np.searchsorted(offs, req, side="right") - 1
        for d in np.unique(doc_of):
            sel = doc_of == d
            row = int(rows[sel][0])
            mine = docs[row] == docs[row, cols[sel][0]]
            n_choices = int(offs[d + 1] - offs[d])
            choice = req - offs[d]
            out[d] = DocRequests(
                doc=int(d),
                prefix=ids[row][mine & (seg[row] == -1)].tolist(),
                choices=[ids[row][mine & (seg[row] == i)].tolist() for i in range(n_choices)],
                positions=[pos[row, cols[sel & (choice == i)]] for i in range(n_choices)],
                targets=[targets[sel & (choice == i)] for i in range(n_choices)],
            )
    missing = [d for d, r in enumerate(out) if r is None]
    if missing:
        raise LlamanasError(f"Documents {missing[:5]} have no requests in the prepared batches.")
    return out  # type: ignore[return-value]


def _logprob_sum(scores: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> float:
    rows = scores[positions].astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    return float((rows[np.arange(len(targets)), targets] - lse).sum())


def loglikelihoods(
    cpp: LlamaCpp, prepared, *, share_context: bool = True, progress: bool = False
) -> np.ndarray:
    """Loglikelihood of every (doc, choice) request of ``prepared`` under llama.cpp: the same array as
    ``evaluation.evaluate.loglikelihoods`` gives for an HF model, so ``results_from_loglikelihoods``
    turns it into the same metrics.

    Per document, the choices' shared prefix is decoded once; each choice then continues from the
    prefix's KV cache (the binding's ``eval`` drops cache entries past ``n_tokens``, so setting
    ``n_tokens`` back to the prefix length reuses it). ``share_context=False`` decodes every choice from an
    empty cache (prefix + choice), for checking. ``cpp`` must be loaded with ``all_logits=True``.
    """
    if not cpp.all_logits:
        raise LlamanasError("llama.cpp loglikelihoods need the model loaded with all_logits=True.")
    reqs = doc_requests(prepared)
    need = max((r.max_len for r in reqs), default=0)
    llm = cpp.llm
    # The binding's token and logit buffers hold the requested n_ctx; llama.cpp may round its own up.
    room = min(llm.n_ctx(), len(llm.input_ids), len(llm.scores))
    if need > room:
        raise LlamanasError(f"A document needs {need} tokens; the llama.cpp context is {room}.")
    offs = prepared.request_offsets
    out = np.zeros(int(offs[-1]), dtype=np.float64)
    for r in tqdm(reqs, disable=not progress, desc="eval (llama.cpp)", unit="doc"):
        p = len(r.prefix)
        if share_context:
            llm.reset()
            if p:
                llm.eval(r.prefix)
        for i, (toks, positions, targets) in enumerate(zip(r.choices, r.positions, r.targets, strict=True)):
            if share_context:
                llm.n_tokens = p  # keep the prefix's KV cache, drop the previous choice's
                if toks:
                    llm.eval(toks)
            else:
                llm.reset()
                llm.eval(r.prefix + toks)
            out[offs[r.doc] + i] = _logprob_sum(llm.scores, positions, targets)
    return out


def evaluate_gguf(
    path: str | Path,
    tasks: list[str] | str,
    questions: Questions = Questions(),
    *,
    tokenizer=None,
    n_threads: int | None = None,
    f32_cache: bool | None = None,
    share_context: bool = True,
    progress: bool = True,
) -> dict:
    """Score a GGUF file on lm-eval multiple-choice tasks through llama.cpp: ``{task: TaskResult}`` as
    ``evaluation.evaluate.evaluate`` returns for an HF model.

    Requests are built by the evaluator's ``prepare`` with the file's own tokenizer (``tokenizer``: an HF
    tokenizer to use instead) and left-truncated to the file's context length, as lm-eval does with the
    model's maximum length. ``f32_cache`` (default: True for an F32 file, so that it reproduces the HF
    float32 scores; llama.cpp's F16 cache otherwise).
    """
    info = read_gguf_info(path)
    vocab = None
    if tokenizer is None:
        vocab = LlamaCpp(info.path, n_ctx=64, vocab_only=True)
        tokenizer = GGUFTokenizer(vocab)
    try:
        prepared = prepare(tokenizer, tasks, questions, max_length=info.context_length or 2048)
    finally:
        if vocab is not None:
            vocab.close()
    need = max(r.max_len for r in doc_requests(prepared))
    if f32_cache is None:
        f32_cache = info.type == "f32"
    cpp = LlamaCpp(
        info.path, n_ctx=-(-need // 64) * 64, n_threads=n_threads, all_logits=True, f32_cache=f32_cache
    )
    try:
        lls = loglikelihoods(cpp, prepared, share_context=share_context, progress=progress)
    finally:
        cpp.close()
    return results_from_loglikelihoods(prepared, lls)


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
    # lazy: this function's source runs alone in that interpreter, so it imports what it uses
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
