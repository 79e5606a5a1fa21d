"""Multiple-choice loglikelihood evaluation that reproduces lm-evaluation-harness 0.4 numbers, fast.

Over 500 lines, one concern: turning prompts into packed batches and batches into lm-eval's metrics.

The requests (prompts, tokens) are those of lm-eval's ``HFLM`` (see ``evaluation/prompts.py`` for the prompts):
the context's trailing whitespace moves to the continuation, continuation tokens are
``tok(context + continuation)[len(tok(context)):]`` and the model input is ``tok(context) + continuation``.
What differs is how they are computed, because the evaluator is the inner loop of architecture search:

* the choices of a document share their common token prefix: "prefix + choice 1 + choice 2 + ..." is one
  packed sequence with a 4D attention mask (each choice sees the prefix and itself, causally) and position
  ids that restart after the prefix, so the context is run once per document instead of once per choice;
* the LM head and log-softmax run only at positions that predict continuation tokens;
* short documents share a row (block-diagonal mask), rows are sorted by length and batched up to
  ``batch_tokens`` (padded tokens included), so little compute goes to padding;
* :func:`prepare` tokenizes and packs once; :func:`score` can then be called on many sub-networks.

The model is looked up at call time (``model.get_decoder()``, ``model.get_output_embeddings()``), never
cached, because a super-network changes its layers and widths in place between calls.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llamanas.errors import LlamanasError
from llamanas.evaluation.prompts import build_prompts, effective_num_fewshot
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import GROUPS, get_task, load_docs, resolve_tasks, subset

_PAD_SEGMENT = -2  # segment id of padding; -1 is the shared prefix, 0.. the choices
_HEAD_CHUNK = 1024  # LM-head rows per matmul: bounds the [rows, vocab] logits buffer


@dataclass
class TaskResult:
    """Scores of one task (or group) on one split; ``stderr`` has the same keys as ``metrics``."""

    task: str
    split: str
    n: int
    num_fewshot: int
    metrics: dict[str, float]  # e.g. {"acc": .52, "acc_norm": .47, "gold_nll": 1.3}
    stderr: dict[str, float]
    chance: float | None  # expected score of uniform random guessing (mean of 1/num_choices)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskRequests:
    """What :func:`score` needs to turn one task's loglikelihoods into lm-eval's metrics."""

    task: str
    split: str
    num_fewshot: int
    indices: np.ndarray  # document indices within the split
    gold: np.ndarray
    choice_chars: list[np.ndarray]  # len(choice) per choice: lm-eval's acc_norm normaliser
    labels: list[np.ndarray] | None  # truthfulqa_mc2 only
    metrics: tuple[str, ...]
    mc2: bool
    first_doc: int  # global number of this task's first document (see Prepared.request_offsets)


@dataclass
class _Batch:
    """Padded packed sequences of a few documents, ready for one forward pass."""

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    segments: torch.Tensor  # [B, T]: -1 prefix, i choice i, -2 padding
    docs: torch.Tensor  # [B, T]: which document of the row (several short ones share a row), -1 padding
    pred_index: torch.Tensor  # [N] flat indices into B*T whose hidden state predicts a continuation token
    targets: torch.Tensor  # [N] the continuation tokens
    request: torch.Tensor  # [N] global request (doc, choice) id each token's logprob adds to
    n_docs: int


@dataclass
class Prepared:
    """Tokenized, packed and batched requests: build once with :func:`prepare`, :func:`score` many times."""

    tasks: list[TaskRequests]
    groups: list[str]
    batches: list[_Batch]
    request_offsets: np.ndarray  # request id of choice 0 of each doc; last entry = number of requests
    n_docs: int
    max_length: int | None
    batch_tokens: int

    @property
    def n_tokens(self) -> int:
        """Tokens fed to the model per :func:`score` call, padding included."""
        return sum(b.input_ids.numel() for b in self.batches)


# ----------------------------------------------------------------------------------------------------------
# Tokenization and packing
# ----------------------------------------------------------------------------------------------------------


class _Encoder:
    """lm-eval ``HFLM.tok_encode``: default special tokens, except for strings already starting with BOS."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.bos_str = tokenizer.decode(prefix_id) if prefix_id is not None else None
        self.cache: dict[str, list[int]] = {}

    def encode_many(self, texts: Sequence[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for add_special in (True, False):
            part = [t for t in todo if (not (self.bos_str and t.startswith(self.bos_str))) == add_special]
            if part:
                ids = self.tokenizer(part, add_special_tokens=add_special)["input_ids"]
                self.cache.update(zip(part, ids, strict=True))

    def __call__(self, text: str) -> list[int]:
        if text not in self.cache:
            self.encode_many([text])
        return self.cache[text]


def _split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval ``_encode_pair``: trailing whitespace of the context moves to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


@dataclass
class _PackedDoc:
    tokens: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    pred_pos: np.ndarray  # packed positions predicting continuation tokens
    targets: np.ndarray
    owner: np.ndarray  # choice of each predicted token


def _pack(inputs: list[list[int]], conts: list[list[int]]) -> _PackedDoc:
    """Pack per-choice model inputs into prefix + one segment per choice.

    ``inputs[i]`` is lm-eval's model input for choice i (context + continuation, minus the last token,
    left-truncated); its last ``len(conts[i])`` positions predict ``conts[i]``.
    """
    p = min(len(x) for x in inputs)
    first = inputs[0]
    for x in inputs[1:]:
        k = 0
        while k < p and x[k] == first[k]:
            k += 1
        p = k
    tokens, positions, segments = [first[:p]], [list(range(p))], [[-1] * p]
    pred_pos, targets, owner = [], [], []
    offset = p
    for i, (x, cont) in enumerate(zip(inputs, conts, strict=True)):
        seg = x[p:]
        tokens.append(seg)
        positions.append(list(range(p, len(x))))
        segments.append([i] * len(seg))
        for j in range(len(x) - len(cont), len(x)):
            pred_pos.append(j if j < p else offset + j - p)
        targets.extend(cont)
        owner.extend([i] * len(cont))
        offset += len(seg)
    cat = np.concatenate
    return _PackedDoc(
        tokens=cat([np.asarray(t, dtype=np.int64) for t in tokens]),
        positions=cat([np.asarray(t, dtype=np.int64) for t in positions]),
        segments=cat([np.asarray(t, dtype=np.int64) for t in segments]),
        pred_pos=np.asarray(pred_pos, dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int64),
        owner=np.asarray(owner, dtype=np.int64),
    )


def _doc_requests(
    encode: _Encoder, contexts: list[str], continuations: list[str], max_length: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """lm-eval ``loglikelihood`` + ``_loglikelihood_tokens`` input construction for one doc's choices."""
    inputs, conts = [], []
    for context, continuation in zip(contexts, continuations, strict=True):
        if not context:
            raise LlamanasError("Empty contexts are not supported (no task here produces one).")
        ctx, cont = _split_pair(context, continuation)
        ctx_enc = encode(ctx)
        cont_enc = encode(ctx + cont)[len(ctx_enc) :]
        if not cont_enc:
            raise LlamanasError(
                f"Continuation {continuation!r} tokenizes to nothing after context {ctx[-40:]!r}."
            )
        full = ctx_enc + cont_enc
        if max_length is not None:
            if len(cont_enc) > max_length:
                raise LlamanasError(
                    f"Continuation of {len(cont_enc)} tokens exceeds max_length={max_length}."
                )
            full = full[-(max_length + 1) :]
        inputs.append(full[:-1])
        conts.append(cont_enc)
    return inputs, conts


def _rows(lengths: list[int]) -> list[list[int]]:
    """Pack documents into rows (best-fit decreasing), so that short documents share a row.

    Row capacity: twice the mean document length, at least 128 tokens and at most the longest document.
    Longer rows would waste attention compute on the block-diagonal mask; a document longer than the
    capacity gets a row of its own.
    """
    capacity = min(max(lengths), max(128, 2 * int(np.mean(lengths))))
    order = sorted(range(len(lengths)), key=lambda d: -lengths[d])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row), sorted
    for d in order:
        n = lengths[d]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(d)
            bisect.insort(free, (room - n, r))
        else:
            rows.append([d])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


def _batches(packed: list[_PackedDoc], request_offsets: np.ndarray, batch_tokens: int) -> list[_Batch]:
    """Rows of packed documents, longest first; a batch takes rows while rows * row_length <= batch_tokens."""
    lengths = [len(p.tokens) for p in packed]
    rows = _rows(lengths)
    fill = [sum(lengths[d] for d in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -fill[r])
    groups: list[list[int]] = []
    for r in order:
        if groups and (len(groups[-1]) + 1) * fill[groups[-1][0]] <= batch_tokens:
            groups[-1].append(r)
        else:
            groups.append([r])
    out = []
    for g in groups:
        length = fill[g[0]]
        ids = np.zeros((len(g), length), dtype=np.int64)
        pos = np.zeros((len(g), length), dtype=np.int64)
        seg = np.full((len(g), length), _PAD_SEGMENT, dtype=np.int64)
        doc = np.full((len(g), length), -1, dtype=np.int64)
        pred, tgt, req = [], [], []
        for b, r in enumerate(g):
            start = 0
            for slot, d in enumerate(rows[r]):
                pd = packed[d]
                end = start + len(pd.tokens)
                ids[b, start:end], pos[b, start:end], seg[b, start:end] = pd.tokens, pd.positions, pd.segments
                doc[b, start:end] = slot
                pred.append(b * length + start + pd.pred_pos)
                tgt.append(pd.targets)
                req.append(request_offsets[d] + pd.owner)
                start = end
        out.append(
            _Batch(
                input_ids=torch.from_numpy(ids),
                position_ids=torch.from_numpy(pos),
                segments=torch.from_numpy(seg),
                docs=torch.from_numpy(doc),
                pred_index=torch.from_numpy(np.concatenate(pred)),
                targets=torch.from_numpy(np.concatenate(tgt)),
                request=torch.from_numpy(np.concatenate(req)),
                n_docs=sum(len(rows[r]) for r in g),
            )
        )
    return out


def prepare(
    tokenizer,
    tasks: list[str] | str,
    questions: Questions = Questions(),
    *,
    batch_tokens: int = 4096,
    max_length: int | None = None,
) -> Prepared:
    """Build, tokenize, pack and batch every request once (no model needed).

    ``questions.split=None`` uses each task's lm-eval default split; ``limit`` keeps a random subset of that
    many documents per task, fixed by ``seed``, after skipping ``offset``; ``max_length`` left-truncates
    inputs like lm-eval does with the model's maximum length (``evaluate`` passes it; None = no truncation).
    """
    split, limit, num_fewshot = questions.split, questions.limit, questions.num_fewshot
    if batch_tokens < 1:
        raise LlamanasError(f"batch_tokens must be >= 1, got {batch_tokens!r}.")
    leaves, groups = resolve_tasks(tasks)
    for name in leaves:
        if split is not None:
            get_task(name).check_split(split)
    encode = _Encoder(tokenizer)
    task_reqs: list[TaskRequests] = []
    packed: list[_PackedDoc] = []
    n_choices: list[int] = []
    for name in leaves:
        spec = get_task(name)
        task_split = split or spec.default_split
        indices = subset(len(load_docs(name, task_split)), limit, questions.seed, questions.offset)
        prompts = build_prompts(name, task_split, num_fewshot, indices)
        pairs = [(c, x) for p in prompts for c, x in zip(p.contexts, p.continuations, strict=True)]
        encode.encode_many([_split_pair(c, x)[0] for c, x in pairs] + [c + x for c, x in pairs])
        task_reqs.append(
            TaskRequests(
                task=name,
                split=task_split,
                num_fewshot=effective_num_fewshot(spec, num_fewshot),
                indices=indices,
                gold=np.asarray([p.gold for p in prompts], dtype=np.int64),
                choice_chars=[np.asarray([float(len(c)) for c in p.choices]) for p in prompts],
                labels=[np.asarray(p.labels) for p in prompts] if spec.mc2 else None,
                metrics=spec.metrics,
                mc2=spec.mc2,
                first_doc=len(packed),
            )
        )
        for p in prompts:
            packed.append(_pack(*_doc_requests(encode, p.contexts, p.continuations, max_length)))
            n_choices.append(len(p.choices))
    offsets = np.concatenate([[0], np.cumsum(n_choices)]).astype(np.int64)
    return Prepared(
        tasks=task_reqs,
        groups=groups,
        batches=_batches(packed, offsets, batch_tokens),
        request_offsets=offsets,
        n_docs=len(packed),
        max_length=max_length,
        batch_tokens=batch_tokens,
    )


# ----------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------


def _attention_mask(segments: torch.Tensor, docs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, T, T] mask: a token sees earlier tokens of its own document that are in the
    shared prefix or in its own choice."""
    t = segments.shape[1]
    sq, sk = segments[:, :, None], segments[:, None, :]
    dq, dk = docs[:, :, None], docs[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (dk == dq) & (dk >= 0) & ((sk == -1) | (sk == sq))
    # Padding queries see only themselves, so no row is fully masked (sdpa would return NaN).
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device) & (dq < 0)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _model_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    if decoder is None or head is None:
        raise LlamanasError(f"{type(model).__name__} has no decoder / output embeddings to evaluate.")
    return decoder, head


def loglikelihoods(model, prepared: Prepared, *, progress: bool = False) -> np.ndarray:
    """Loglikelihood of every (doc, choice) request, float64, indexed by ``prepared.request_offsets``."""
    decoder, head = _model_parts(model)
    # Hidden states (and so the additive mask) take the embeddings' dtype, even when linears are quantized.
    embed = decoder.get_input_embeddings().weight
    device, dtype = embed.device, embed.dtype
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = torch.zeros(int(prepared.request_offsets[-1]), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=prepared.n_docs, disable=not progress, desc="eval", unit="doc") as bar,
        ):
            for batch in prepared.batches:
                mask = _attention_mask(batch.segments.to(device), batch.docs.to(device), dtype)
                hidden = decoder(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=mask,
                    position_ids=batch.position_ids.to(device),
                    use_cache=False,
                ).last_hidden_state
                hidden = hidden.reshape(-1, hidden.shape[-1])[batch.pred_index.to(device)]
                targets = batch.targets.to(device)
                for s in range(0, len(targets), _HEAD_CHUNK):
                    logits = head(hidden[s : s + _HEAD_CHUNK]).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    logp = torch.log_softmax(logits, dim=-1)
                    tok = logp.gather(1, targets[s : s + _HEAD_CHUNK, None])[:, 0]
                    out.index_add_(0, batch.request[s : s + _HEAD_CHUNK], tok.double().cpu())
                bar.update(batch.n_docs)
    finally:
        model.train(was_training)
    return out.numpy()


def _stderr(x: np.ndarray) -> float:
    """lm-eval ``mean_stderr``: sample standard deviation / sqrt(n)."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def _per_doc(
    req: TaskRequests, prepared: Prepared, lls: np.ndarray
) -> tuple[dict[str, np.ndarray], list[float]]:
    """lm-eval's per-document metric values of one task (and each document's chance score)."""
    offs = prepared.request_offsets
    per_doc: dict[str, list[float]] = {m: [] for m in (*req.metrics, "gold_nll")}
    chance = []
    for k in range(len(req.indices)):
        d = req.first_doc + k
        ll = lls[offs[d] : offs[d + 1]]
        gold = int(req.gold[k])
        if req.mc2:
            # lm_eval/tasks/truthfulqa/utils.py::process_results_mc2 (max-shifted exp: same value, no underflow)
            probs = np.exp(ll - ll.max())
            labels = req.labels[k]
            per_doc["acc"].append(float(probs[labels == 1].sum() / probs.sum()))
            chance.append(float((labels == 1).mean()))
        else:
            if "acc" in per_doc:
                per_doc["acc"].append(float(np.argmax(ll) == gold))
            if "acc_norm" in per_doc:
                per_doc["acc_norm"].append(float(np.argmax(ll / req.choice_chars[k]) == gold))
            chance.append(1.0 / len(ll))
        per_doc["gold_nll"].append(float(-ll[gold]))
    return {m: np.asarray(v) for m, v in per_doc.items()}, chance


def per_question(prepared: Prepared, lls: np.ndarray, metric: str = "acc") -> dict[str, np.ndarray]:
    """Each task's ``metric`` per question, in document order: what a paired comparison of two models on the
    same questions needs (their ``TaskResult.metrics[metric]`` is its mean)."""
    return {req.task: _per_doc(req, prepared, lls)[0][metric] for req in prepared.tasks}


def _task_result(req: TaskRequests, prepared: Prepared, lls: np.ndarray) -> TaskResult:
    per_doc, chance = _per_doc(req, prepared, lls)
    metrics = {m: float(np.mean(v)) for m, v in per_doc.items()}
    stderr = {m: _stderr(v) for m, v in per_doc.items()}
    if req.mc2:  # lm-eval calls it "acc"; "mc2" is the name people look for
        metrics["mc2"], stderr["mc2"] = metrics["acc"], stderr["acc"]
    return TaskResult(
        req.task, req.split, len(req.indices), req.num_fewshot, metrics, stderr, float(np.mean(chance))
    )


def _group_result(name: str, parts: list[TaskResult]) -> TaskResult:
    """lm-eval group aggregation (weight_by_size): size-weighted means, pooled standard errors."""
    sizes = np.asarray([p.n for p in parts], dtype=np.float64)
    keys = [k for k in parts[0].metrics if all(k in p.metrics for p in parts)]
    metrics = {k: float(sum(p.metrics[k] * p.n for p in parts) / sizes.sum()) for k in keys}
    stderr = {}
    for k in keys:
        # lm_eval/api/metrics.py::pooled_sample_stderr
        var = sum((p.n - 1) * p.stderr[k] ** 2 * p.n for p in parts) / (sizes.sum() - len(parts))
        stderr[k] = float(np.sqrt(var / sizes.sum()))
    chance = float(sum((p.chance or 0.0) * p.n for p in parts) / sizes.sum())
    splits = sorted({p.split for p in parts})
    return TaskResult(name, ",".join(splits), int(sizes.sum()), parts[0].num_fewshot, metrics, stderr, chance)


def results_from_loglikelihoods(prepared: Prepared, lls: np.ndarray) -> dict[str, TaskResult]:
    """lm-eval's per-doc metrics and aggregation, from :func:`loglikelihoods` output."""
    results = {req.task: _task_result(req, prepared, lls) for req in prepared.tasks}
    for group in prepared.groups:
        results[group] = _group_result(group, [results[t] for t in GROUPS[group]])
    return results


def score(model, prepared: Prepared, *, progress: bool = False) -> dict[str, TaskResult]:
    """Evaluate ``model`` (as it is right now) on prepared requests."""
    return results_from_loglikelihoods(prepared, loglikelihoods(model, prepared, progress=progress))


def mean_gold_nll(model, prepared: Prepared, *, progress: bool = False) -> float:
    """Mean negative loglikelihood of the gold answers over all documents: a smooth search objective
    (lower is better), also reported per task as ``metrics["gold_nll"]``."""
    results = results_from_loglikelihoods(prepared, loglikelihoods(model, prepared, progress=progress))
    parts = [results[r.task] for r in prepared.tasks]
    return float(sum(r.metrics["gold_nll"] * r.n for r in parts) / sum(r.n for r in parts))


def model_max_length(model, tokenizer=None, default: int = 2048) -> int:
    """lm-eval ``resolve_max_length``: the config's context length, else the tokenizer's, else 2048."""
    config = model.config
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if value:
                return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1_000_000_000:
        return int(tok_max)
    return default


def evaluate(
    model,
    tokenizer,
    tasks: list[str] | str,
    questions: Questions = Questions(),
    *,
    batch_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, TaskResult]:
    """Score ``model`` (any HF causal LM, e.g. LlamaForCausalLM) on lm-eval multiple-choice tasks.

    Returns one :class:`TaskResult` per task, plus one per requested group (e.g. ``mmlu``); MMLU
    subjects are reported as ``mmlu_<subject>``. Same as ``score(model, prepare(...))``.
    ``batch_tokens`` defaults to ``auto_batch_tokens(model)``; ``questions`` says which documents of each
    task are scored (``questions.offset`` skips those a search selected on).
    """
    max_length = model_max_length(model, tokenizer)
    batch_tokens = batch_tokens or auto_batch_tokens(model, max_length)
    prepared = prepare(tokenizer, tasks, questions, batch_tokens=batch_tokens, max_length=max_length)
    return score(model, prepared, progress=progress)


CPU_BATCH_TOKENS = 4096  # on the CPU larger batches buy no speed; the reference numbers use this


def auto_batch_tokens(model, max_length: int = 2048, fraction: float = 0.25) -> int:
    """Tokens per batch for ``model``'s device: 4096 on the CPU; on a GPU as many as ``fraction`` of its
    free memory holds, counting per token the MLP and attention activations of one layer (the layers run
    one after another) and a row's attention scores, so a 7B model and a 135M one both fill the GPU."""
    param = next(model.parameters())
    if param.device.type != "cuda":
        return CPU_BATCH_TOKENS
    c = model.config
    heads = c.num_attention_heads
    per_token = (8 * c.hidden_size + 4 * c.intermediate_size + heads * max_length) * param.element_size()
    free, _ = torch.cuda.mem_get_info(param.device)
    return int(min(65536, max(CPU_BATCH_TOKENS, fraction * free // per_token)))
