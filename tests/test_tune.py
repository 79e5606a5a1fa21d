"""InstaTune fine-tuning on a tiny random LLaMA and a tokenizer trained in the test (no downloads)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llamanas import cli
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.data import load_alpaca
from llamanas.supernet.elastic import SUPERNET_FILE, SuperNet, load_supernet
from llamanas.supernet.slicing import standalone
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.batches import IGNORE, Batches, collate, encode
from llamanas.tuning.lora import attach_lora, merge_lora
from llamanas.tuning.losses import SoftTargets, distill_loss, eval_loss, response_logits, token_logits
from llamanas.tuning.sampling import SCHEDULES, STRATEGIES, Sampler, Schedule, SizeBuckets, restrict
from llamanas.tuning.tickets import cubic_sparsity
from llamanas.tuning.tune import finetune

COLORS = ["red", "green", "blue", "yellow"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, data file): a 4-layer LLaMA with a byte-level BPE tokenizer, 24 Alpaca records."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tune")
    records = [
        {
            "instruction": f"Name color number {i}.",
            "input": "" if i % 2 else f"hint {i % 3}",
            "output": f"Color {i} is {COLORS[i % 4]}.",
        }
        for i in range(24)
    ]
    data = root / "data.json"
    data.write_text(json.dumps(records))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [e.prompt + e.response for e in load_alpaca(data)]
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # The default init (std 0.02) leaves the layers near-identity, so slicing them changes little;
    # larger weights make sub-networks differ from the full network, as in a pretrained model.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, data


def args_for(tiny, out, **kw) -> TuneArgs:
    """Fine-tuning arguments; the space keeps every attention and MLP block (the loss checks below compare
    the smallest sub-network of the widths and depths, which skipping blocks would make degenerate)."""
    model_dir, data = tiny
    no_blocks = Path(data).parent / "no_blocks.yaml"
    no_blocks.write_text("skip_attention: false\nskip_mlp: false\n")
    base = dict(
        data=str(data),
        out=str(out),
        model=str(model_dir),
        steps=24,
        batch_size=4,
        lr=1e-2,
        eval_size=0,
        space=str(no_blocks),
    )
    base.update(kw)
    return TuneArgs(**base)


def bits_space(folder: Path) -> Path:
    """A precision space file in ``folder``: the tiny model's widths and depths, each layer at 4, 8 or 16 bits."""
    path = folder / "bits.yaml"
    path.write_text("skip_attention: false\nskip_mlp: false\nbits: [4, 8, 16]\n")
    return path


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subnet_losses(supernet: SuperNet, tokenizer, data) -> dict[str, float]:
    """Response loss of the largest and smallest sub-networks on the whole (training) data."""
    batches = Batches(encode(load_alpaca(data), tokenizer, 256), 8, tokenizer.pad_token_id)
    space = supernet.space
    return {
        name: eval_loss(supernet, batches, cfg)
        for name, cfg in (("largest", space.largest()), ("smallest", space.smallest()))
    }


@pytest.fixture(scope="module")
def before(tiny):
    """Losses of the ordered, untrained model: what every strategy must improve on."""
    model_dir, data = tiny
    supernet, tok = load_supernet(str(model_dir), calibration=str(data))
    supernet.space = SearchSpace.from_arch(supernet.arch, skip_attention=False, skip_mlp=False)  # as args_for
    return subnet_losses(supernet, tok, data)


# --- arguments and bad input -------------------------------------------------------------------------


def test_tune_args_round_trip_and_unknown_keys():
    a = TuneArgs(data="d.json", out="o", strategy="sandwich", schedule="complexity", distill=True, lr=3e-4)
    assert TuneArgs.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert TuneArgs(data="d", out="o").peak_lr == 2e-5 and TuneArgs(lora=True).peak_lr == 2e-4
    with pytest.raises(LlamanasError, match=r"Unknown TuneArgs keys \['epochs'\]"):
        TuneArgs.from_dict({**a.to_dict(), "epochs": 3})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"strategy": "zigzag"}, "Unknown strategy 'zigzag'. Available: full, alternate, sandwich."),
        (
            {"schedule": "random"},
            "Unknown schedule 'random'. Available: uniform, progressive, delayed, complexity.",
        ),
        ({"precision": "fp8"}, "Unknown precision 'fp8'. Available: auto, fp32, bf16."),
        ({"steps": 0}, "steps must be >= 1; got 0."),
        ({"warmup": 1.5}, "warmup is a fraction of the steps in [0, 1); got 1.5."),
        ({"distill": True, "strategy": "full"}, "distill needs sub-networks to teach"),
        ({"distill_tokens": "prompt"}, "Unknown distill_tokens 'prompt'. Available: all, response."),
        (
            {"min_params": 1.2},
            "min_params is a fraction of the full network's parameters in [0, 1); got 1.2.",
        ),
        ({"routing": "moe"}, "Unknown routing 'moe'. Available: none, split, mixture, precision."),
        ({"routing": "split", "lora": True}, "routing 'split' trains its own adapters: drop --lora."),
        ({"routing": "mixture", "experts": 1}, "A mixture needs experts >= 2; got 1."),
        ({"routing": "mixture", "strategy": "full"}, "routing 'mixture' routes sub-networks"),
        ({"ticket_sparsity": 1.0}, "ticket_sparsity is a fraction in [0, 1); got 1.0."),
        ({"ticket_start": 0.9, "ticket_end": 0.5}, "ticket_start and ticket_end must satisfy"),
        ({"ticket_sparsity": 0.5, "lora": True}, "ticket_sparsity prunes the weights that train"),
    ],
)
def test_bad_arguments_name_the_value(kw, message):
    with pytest.raises(LlamanasError) as e:
        TuneArgs(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_data_gives_one_clear_line(tiny, tmp_path):
    cases = {
        "missing.json": (None, "does not exist"),
        "broken.json": ("{not json", "is not valid JSON"),
        "wrong.json": (json.dumps([{"question": "q", "answer": "a"}]), "expected Alpaca keys"),
        "empty.json": ("[]", "holds no records"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(LlamanasError) as e:
            finetune(args_for(tiny, tmp_path / "out", data=str(path)), progress=False)
        assert message in str(e.value) and name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LlamanasError, match="needs training data"):
        finetune(TuneArgs(out=str(tmp_path / "o")))
    with pytest.raises(LlamanasError, match="eval_size=24 leaves no training data"):
        finetune(args_for(tiny, tmp_path / "out", eval_size=24), progress=False)


def test_cli_prints_one_error_line(tiny, tmp_path, monkeypatch, capsys):

    model_dir, data = tiny
    argv = ["llamanas", "finetune", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", [*argv, "--schedule", "sometimes"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: Unknown schedule 'sometimes'. Available: uniform, progressive, delayed, complexity."
    )


def test_cli_defaults_mirror_tune_args():
    """The flags and TuneArgs must not drift apart (same names, same defaults)."""
    import typer

    from llamanas.cli.app import app

    command = typer.main.get_command(app).commands["finetune"]
    flags = {p.name: p.default for p in command.params}  # built from TuneArgs: the same names
    fields = {f.name: f.default for f in dataclasses.fields(TuneArgs)}
    assert set(flags) == set(fields)
    for name in fields.keys() - {"data", "out"}:
        assert flags[name] == fields[name], name


def test_cli_finetune_end_to_end(tiny, tmp_path, monkeypatch):

    model_dir, data = tiny
    out = tmp_path / "sn"
    argv = ["llamanas", "finetune", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--steps", "2", "--batch-size", "4", "--eval-size", "4"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    meta = json.loads((out / SUPERNET_FILE).read_text())
    assert meta["training"]["steps"] == 2 and meta["training"]["args"]["eval_size"] == 4
    assert set(meta["training"]["final_losses"]["held_out"]) == {"largest", "smallest"}


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--routing", "split", "--split-samples", "4", "--split-batches", "1"], {"router": "split"}),
        (["--routing", "mixture", "--experts", "3"], {"router": "mixture", "experts": 3}),
        (["--routing", "precision", "--space", "BITS"], {"router": "precision", "experts": 3}),
        (
            ["--ticket-sparsity", "0.5", "--ticket-start", "0", "--ticket-end", "0.5", "--ticket-every", "1"],
            {},
        ),
    ],
    ids=["split", "mixture", "precision", "tickets"],
)
def test_cli_finetune_runs_each_variant(tiny, tmp_path, monkeypatch, flags, expect):
    """The README's variants run from `llamanas finetune` and are recorded in the super-network's file."""
    model_dir, data = tiny
    bits = bits_space(tmp_path)
    out = tmp_path / "sn"
    argv = ["llamanas", "finetune", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    argv += ["--steps", "2", "--batch-size", "4", "--eval-size", "0", "--strategy", "sandwich"]
    monkeypatch.setattr("sys.argv", argv + [str(bits) if f == "BITS" else f for f in flags])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    training = json.loads((out / SUPERNET_FILE).read_text())["training"]
    if expect:
        assert expect.items() <= training["routing"].items()
        assert (out / "llamanas_routing.safetensors").is_file()
    else:
        assert training["tickets"] == {"sparsity": pytest.approx(0.5, abs=0.01), "target": 0.5}


# --- data --------------------------------------------------------------------------------------------


def test_encode_masks_the_prompt_and_truncates(tiny):
    model_dir, data = tiny
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = load_alpaca(data)
    encoded = encode(examples, tok, 256)
    ids, plen = encoded[0]
    assert ids[:plen] == tok(examples[0].prompt)["input_ids"] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[plen:-1]) == examples[0].response
    short = encode(examples, tok, plen + 2)
    assert all(len(i) <= plen + 2 for i, _ in short)
    with pytest.raises(LlamanasError, match="raise --max-length"):
        encode(examples, tok, 3)
    batch = collate(encoded[:3], tok.pad_token_id)
    lab, mask = batch["labels"], batch["attention_mask"]
    for row, (i, p) in enumerate(encoded[:3]):
        assert (lab[row, :p] == IGNORE).all() and (lab[row, p : len(i)] == torch.tensor(i[p:])).all()
        assert mask[row].sum() == len(i) and (lab[row, len(i) :] == IGNORE).all()


def test_batches_are_length_sorted_and_deterministic(tiny):
    model_dir, data = tiny
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    encoded = encode(load_alpaca(data), tok, 256)
    b = Batches(encoded, 5, tok.pad_token_id, seed=3)
    assert len(b) == 5
    widths = [max(len(i) for i, _ in group) for group in b.batches]
    assert widths == sorted(widths)
    first_epoch = [b[i]["input_ids"].shape for i in range(len(b))]
    assert sorted(s[1] for s in first_epoch) == widths  # every batch once per epoch
    again = Batches(encoded, 5, tok.pad_token_id, seed=3)
    for i in (0, 4, 7, 12):
        assert torch.equal(b[i]["input_ids"], again[i]["input_ids"])


# --- sampling schedules ------------------------------------------------------------------------------


def space_30(blocks: bool = False) -> SearchSpace:
    arch = Arch(30, 576, 1536, 9, 3, 64, 49152, True)
    return SearchSpace.from_arch(arch, skip_attention=blocks, skip_mlp=blocks)


def test_size_buckets_are_balanced_under_uniform_sampling():
    space = space_30()
    buckets = SizeBuckets(space, 4, seed=0)
    rng = np.random.default_rng(1)
    counts = np.bincount([buckets.index(space.sample(rng)) for _ in range(800)], minlength=4)
    assert len(buckets) == 4 and counts.min() > 120  # about 200 each
    assert buckets.index(space.smallest()) == 0 and buckets.index(space.largest()) == 3
    assert buckets.lo == buckets.params(space.smallest())  # the first label starts at the smallest
    assert buckets.label(3).endswith("-100% params")


def test_progressive_widens_the_sampled_space():
    space = space_30()
    s = Sampler(space, "progressive", total_steps=100, seed=0, stages=4)
    early = [s.sample(0) for _ in range(50)]
    assert all(c.depth >= 26 and min(c.mlp) == 1536 and min(c.kv_groups) == 3 for c in early)
    assert restrict(space, 1.0) == space
    first_n = SearchSpace.from_arch(space.arch, mode="first_n")
    assert first_n.depth_choices == (21, 24, 27, 30)
    assert restrict(first_n, 0.5).depth_choices == (27, 30) and restrict(first_n, 0.5).min_depth == 27
    late = [s.sample(99) for _ in range(200)]
    assert min(c.depth for c in late) < 20 and min(min(c.mlp) for c in late) == 384
    assert s.smallest(0).depth == 26 and s.smallest(99) == space.smallest()


def test_delayed_trains_only_the_full_network_first():
    space = space_30()
    s = Sampler(space, "delayed", total_steps=100, seed=0, delay_fraction=0.3)
    assert not s.shrinking(29) and s.shrinking(30)
    assert all(s.sample(k) == space.largest() for k in range(30))
    assert len({s.sample(50).key() for _ in range(10)}) == 10


def test_complexity_spends_samples_on_high_loss_sizes():
    space = space_30()
    s = Sampler(space, "complexity", total_steps=100, seed=0, complexity_power=2.0)
    for _ in range(3):
        for b, loss in enumerate((4.0, 3.0, 2.0, 2.0)):  # small sub-networks are worse
            cfg = next(c for c in (s.space.sample(s.rng) for _ in range(500)) if s.buckets.index(c) == b)
            s.update(cfg, loss)
            if b == 2 and s.counts[3] == 0:  # a bucket never visited is drawn first
                assert s.bucket_probs().tolist() == [0, 0, 0, 1]
    p = s.bucket_probs()
    assert p[0] > p[1] > p[2] and p[2] == pytest.approx(p[3])
    assert p[0] == pytest.approx(0.1 / 4 + 0.9 * 4 / (4 + 2.25 + 1 + 1))
    drawn = np.bincount([s.buckets.index(s.sample(50)) for _ in range(400)], minlength=4)
    assert drawn[0] > 1.5 * drawn[2]
    # The state round-trips: the same draws after a reload.
    state = json.loads(json.dumps(s.state_dict()))
    t = Sampler(space, "complexity", total_steps=100, seed=7)
    t.load_state_dict(state)
    assert [s.sample(60).key() for _ in range(5)] == [t.sample(60).key() for _ in range(5)]


@pytest.mark.parametrize("schedule", ["uniform", "complexity"])
def test_min_params_keeps_training_inside_the_size_band(schedule):
    space = space_30()
    whole = Sampler(space, schedule, total_steps=100, seed=0)
    band = Sampler(space, schedule, total_steps=100, seed=0, min_params=0.65)
    everywhere = [whole.fraction(whole.sample(50)) for _ in range(200)]
    inside = [band.fraction(band.sample(50)) for _ in range(200)]
    assert min(everywhere) < 0.5 and min(inside) >= 0.65  # the whole space reaches 42%; the band stops at 65%
    # The sandwich's smallest sits at the band's floor: inside it, below the typical band sample.
    floors = [band.fraction(band.smallest(50)) for _ in range(10)]
    assert all(0.65 <= f < np.median(inside) for f in floors)
    assert whole.fraction(whole.smallest(50)) == pytest.approx(0.317, abs=0.001)
    # Loss-curve buckets span the band, not the whole space.
    assert band.buckets.index(space.smallest()) == 0 and band.buckets.lo > whole.buckets.lo


def test_min_params_out_of_reach_says_what_is():
    with pytest.raises(
        LlamanasError, match=r"min_params=0.9 is above .* \(they span 4\d%-7\d% .*at most 0.7"
    ):
        Sampler(space_30(), min_params=0.9)
    with pytest.raises(LlamanasError, match=r"min_params must lie in \[0, 1\)"):
        Sampler(space_30(), min_params=1.0)


def test_unknown_schedule_lists_the_allowed_ones():
    with pytest.raises(LlamanasError, match="Unknown schedule 'fast'. Available: uniform, progressive"):
        Sampler(space_30(), "fast")
    assert SCHEDULES == ("uniform", "progressive", "delayed", "complexity")
    assert tuple(Schedule) == SCHEDULES and Sampler(space_30(), Schedule.DELAYED).schedule == "delayed"


def test_sampler_state_stores_the_schedule_as_a_plain_string():
    """Checkpoints hold the schedule as text (as before the enum), and such states load."""
    s = Sampler(space_30(), "complexity", total_steps=10)
    state = s.state_dict()
    assert type(state["schedule"]) is str and state["schedule"] == "complexity"
    old = {**json.loads(json.dumps(state)), "schedule": "complexity"}
    Sampler(space_30(), Schedule.COMPLEXITY, total_steps=10, seed=3).load_state_dict(old)
    with pytest.raises(LlamanasError, match="for schedule 'uniform', not 'complexity'"):
        s.load_state_dict({**old, "schedule": "uniform"})


# --- training: every strategy and schedule learns ----------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"strategy": "full"},
        {"strategy": "alternate"},
        {"strategy": "sandwich", "num_random": 1},
        {"strategy": "alternate", "schedule": "progressive"},
        {"strategy": "alternate", "schedule": "delayed"},
        {"strategy": "sandwich", "schedule": "complexity", "num_random": 1},
        {"strategy": "alternate", "distill": True},
        {"strategy": "sandwich", "distill": True, "num_random": 1, "grad_accum": 2},
        {"strategy": "alternate", "distill": True, "distill_tokens": "response"},
        {"strategy": "alternate", "precision": "bf16"},  # bf16 autocast works on CPU too, if slowly
    ],
    ids=lambda kw: "-".join(str(v) if not isinstance(v, bool) else k for k, v in kw.items()),
)
def test_each_strategy_and_schedule_lowers_the_loss(tiny, tmp_path, before, kw):
    result = finetune(args_for(tiny, tmp_path / "sn", **kw), progress=False)
    after = subnet_losses(result.supernet, result.tokenizer, tiny[1])
    assert after["largest"] < before["largest"] - 1.0, (before, after)
    if kw["strategy"] != "full":
        assert after["smallest"] < before["smallest"] - 1.0, (before, after)
    rows = read_rows(result.out / "losses.csv")
    per_step = {"full": 1, "alternate": 1, "sandwich": 2 + kw.get("num_random", 2)}[kw["strategy"]]
    assert len(rows) == 24 * per_step
    largest = [float(r["loss"]) for r in rows if r["series"] == "largest"]
    assert np.mean(largest[-3:]) < 0.7 * np.mean(largest[:3])
    assert (result.out / "losses.png").stat().st_size > 1000
    kinds = {r["kind"] for r in rows if r["role"] != "largest"}
    assert kinds == ({"kd"} if kw.get("distill") else ({"ce"} if kw["strategy"] != "full" else set()))
    rec = result.record
    assert rec["steps"] == 24 and rec["tokens"] > 0 and rec["wall_time_s"] > 0
    assert rec["mixed_precision"] == ("bf16" if kw.get("precision") == "bf16" else "no")
    assert result.supernet.model.dtype == torch.float32


def test_alternate_trains_sub_networks_better_than_full_fine_tuning(tiny, tmp_path):
    losses = {}
    for strategy in ("full", "alternate"):
        result = finetune(args_for(tiny, tmp_path / strategy, strategy=strategy, steps=30), progress=False)
        losses[strategy] = subnet_losses(result.supernet, result.tokenizer, tiny[1])
    # Full fine-tuning fits the full network better; alternate fits its sub-networks better.
    assert losses["alternate"]["smallest"] < losses["full"]["smallest"] - 0.3, losses
    assert losses["full"]["largest"] < losses["alternate"]["largest"], losses


def test_token_logits_keep_every_real_next_token_position():
    logits = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # the second example is padded after 2 tokens
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    # Positions 0..2 predict tokens 1..3 of the first example; position 0 predicts token 1 of the second.
    assert token_logits(logits, mask).flatten().tolist() == [0.0, 1.0, 2.0, 4.0]
    z, y = response_logits(logits, labels)
    assert z.flatten().tolist() == [1.0, 2.0, 4.0] and y.tolist() == [5, 6, 7]


def test_distill_loss_values():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 11, generator=g)
    assert distill_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(5, 11, generator=g)
    p_t = t.softmax(-1)
    expected = (p_t * (p_t.log() - z.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distill_loss(z, t), expected)
    assert distill_loss(z, t, temperature=2.0).item() > 0
    # Precomputed targets (shared by the students of a step) give the same value, temperature included.
    torch.testing.assert_close(distill_loss(z, SoftTargets.from_logits(t)), expected)
    p2 = (t / 2).softmax(-1)
    expected2 = 4 * (p2 * (p2.log() - (z / 2).log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distill_loss(z, t, temperature=2.0), expected2)
    torch.testing.assert_close(distill_loss(z, SoftTargets.from_logits(t, 2.0)), expected2)


# --- LoRA ---------------------------------------------------------------------------------------------


def test_lora_adapters_are_sliced_like_the_weights(tiny):
    """Sub-network outputs with live (unmerged) adapters equal those of the merged plain weights."""
    pytest.importorskip("peft")
    model_dir, data = tiny
    supernet, _ = load_supernet(str(model_dir), calibration=str(data))
    peft_model = attach_lora(supernet, r=4, alpha=8, dropout=0.0)
    supernet.model.double()  # exact arithmetic: any slicing mismatch shows, rounding does not
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in supernet.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    trainable = {n for n, p in supernet.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, 300, (2, 12), generator=g)
    rng = np.random.default_rng(0)
    cfgs = [supernet.space.largest(), supernet.space.smallest()] + [
        supernet.space.sample(rng) for _ in range(4)
    ]
    supernet.model.eval()
    with torch.no_grad():
        live = []
        for cfg in cfgs:
            with supernet.subnet(cfg):
                live.append(supernet.model(ids).logits)
        merge_lora(supernet, peft_model)
        assert not any("lora" in n for n, _ in supernet.model.named_parameters())
        for cfg, expected in zip(cfgs, live, strict=True):
            with supernet.subnet(cfg):
                torch.testing.assert_close(supernet.model(ids).logits, expected, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(live[0], live[1])


def test_lora_finetune_saves_merged_plain_weights(tiny, tmp_path, before):
    pytest.importorskip("peft")
    model_dir, data = tiny
    args = args_for(tiny, tmp_path / "lora", lora=True, lora_r=8, lora_alpha=16, lr=5e-2, lora_dropout=0.0)
    result = finetune(args, progress=False)
    saved = load_file(str(result.out / "model.safetensors"))
    base = load_file(str(model_dir / "model.safetensors"))
    assert set(saved) == set(base)  # plain weights: no adapter tensors left
    after = subnet_losses(result.supernet, result.tokenizer, data)
    assert after["largest"] < before["largest"] - 1.0 and after["smallest"] < before["smallest"] - 0.5
    # Only the adapted linears changed; embeddings and norms are frozen under LoRA.
    reloaded, _ = load_supernet(str(result.out))
    ordered, _ = load_supernet(str(model_dir), calibration=str(data))
    sd_new, sd_old = reloaded.model.state_dict(), ordered.model.state_dict()
    torch.testing.assert_close(sd_new["model.embed_tokens.weight"], sd_old["model.embed_tokens.weight"])
    torch.testing.assert_close(sd_new["model.norm.weight"], sd_old["model.norm.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (sd_new[q] - sd_old[q]).abs().max() > 1e-3


@pytest.mark.parametrize("routing", ["split", "mixture"])
def test_routed_finetune_trains_adapters_and_saves_them_beside_plain_weights(
    tiny, tmp_path, before, routing, ids
):
    model_dir, data = tiny
    args = args_for(
        tiny,
        tmp_path / routing,
        routing=routing,
        strategy="sandwich",
        num_random=1,
        lora_r=8,
        lora_alpha=16,
        lr=5e-2,
        experts=2,
    )
    result = finetune(args, progress=False)
    routing_spec = result.record["routing"]
    assert routing_spec["router"] == routing
    if routing == "split":  # the split follows the gene whose gradients disagree most
        scores = routing_spec["split_scores"]
        assert routing_spec["gene"] == max(scores, key=scores.get) and routing_spec["experts"] == len(
            routing_spec["choices"]
        )
    after = subnet_losses(result.supernet, result.tokenizer, data)
    assert after["largest"] < before["largest"] - 1.0 and after["smallest"] < before["smallest"] - 0.5
    # The base is frozen and saved plain; the adapters and their rule are files of their own.
    saved = load_file(str(result.out / "model.safetensors"))
    ordered, _ = load_supernet(str(model_dir), calibration=str(data))
    assert set(saved) <= set(ordered.model.state_dict())  # no adapter tensors (a tied head is not saved)
    for name, t in saved.items():
        torch.testing.assert_close(t, ordered.model.state_dict()[name], msg=name)
    assert (result.out / "llamanas_routing.safetensors").is_file()
    with pytest.raises(LlamanasError, match="has routed adapters"):
        finetune(args_for(tiny, tmp_path / "again", model=str(result.out), steps=2), progress=False)
    reloaded, _ = load_supernet(str(result.out))
    x = ids % len(result.tokenizer)
    for cfg in (reloaded.space.largest(), reloaded.space.smallest()):
        with torch.no_grad(), reloaded.subnet(cfg), result.supernet.subnet(cfg):
            torch.testing.assert_close(reloaded.model(x).logits, result.supernet.model(x).logits)


def test_precision_adapters_train_each_precision_fake_quantized(tiny, tmp_path, ids):
    """LLM-QFA: one adapter per precision on the frozen base, each layer's bits picking its adapter; the
    sub-networks train fake-quantized, so their quantized extraction is what trained."""
    model_dir, data = tiny
    space = bits_space(tmp_path)
    with pytest.raises(LlamanasError, match="no precision genes"):
        finetune(args_for(tiny, tmp_path / "nobits", routing="precision", steps=2), progress=False)
    args = args_for(
        tiny, tmp_path / "p", routing="precision", space=str(space), strategy="sandwich", num_random=1,
        lora_r=8, lora_alpha=16, lr=5e-2, schedule="complexity",
    )  # fmt: skip
    supernet, tok = load_supernet(str(model_dir), space_file=str(space), calibration=str(data))
    before = subnet_losses(supernet, tok, data)  # the smallest is at 4 bits: its quantized copy runs
    result = finetune(args, progress=False)
    assert (
        list(result.record["routing"]["choices"]) == [4, 8, 16] and result.record["routing"]["experts"] == 3
    )
    after = subnet_losses(result.supernet, result.tokenizer, data)
    assert after["largest"] < before["largest"] - 1.0 and after["smallest"] < before["smallest"] - 0.5
    # The complexity schedule balances decoder bytes in a precision space (LLM-QFA's resource).
    rows = read_rows(result.out / "losses.csv")
    assert any(r["series"].endswith("bytes") for r in rows)
    # Reloaded, the 4-bit smallest sub-network extracts with its own adapter merged, then quantized.
    reloaded, _ = load_supernet(str(result.out))
    small = reloaded.space.smallest()
    x = ids % len(result.tokenizer)
    reloaded.fake_quant = True
    with torch.no_grad(), reloaded.subnet(small):
        expected = reloaded.model(x).logits
    reloaded.fake_quant = False
    torch.testing.assert_close(standalone(reloaded, small)(x).logits, expected, rtol=0, atol=1e-4)


def test_cubic_sparsity_schedule():
    assert [round(cubic_sparsity(s, 10, 0.5, 0.2, 0.8), 4) for s in (0, 2, 5, 8, 10)] == [
        0.0,
        0.0,
        0.4375,
        0.5,
        0.5,
    ]


def test_tickets_prune_on_schedule_and_keep_the_mask(tiny, tmp_path, before):
    model_dir, data = tiny
    args = args_for(
        tiny, tmp_path / "t", strategy="sandwich", num_random=1, ticket_sparsity=0.5, ticket_start=0.25,
        ticket_end=0.5, ticket_every=2,
    )  # fmt: skip
    result = finetune(args, progress=False)
    assert result.record["tickets"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    after = subnet_losses(result.supernet, result.tokenizer, data)
    assert after["largest"] < before["largest"] - 1.0 and after["smallest"] < before["smallest"] - 0.5
    # The ticket is in the saved weights: half of every decoder linear is zero, nothing else is pruned.
    saved = load_file(str(result.out / "model.safetensors"))
    for name, w in saved.items():
        zeros = float((w == 0).float().mean())
        if ".layers." in name and name.endswith("proj.weight"):
            assert zeros == pytest.approx(0.5, abs=0.01), name
        else:
            assert zeros < 0.01, name
    # A sub-network extracted from it keeps the zeros where its slice has them.
    reloaded, _ = load_supernet(str(result.out))
    cfg = reloaded.space.smallest()
    small = standalone(reloaded, cfg)
    w = small.model.layers[0].mlp.down_proj.weight
    torch.testing.assert_close(w, saved["model.layers.0.mlp.down_proj.weight"][:, : cfg.mlp[0]])
    assert float((w == 0).float().mean()) > 0.3


# --- checkpoints, resume, and the saved super-network ------------------------------------------------


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "kw",
    [
        {"strategy": "sandwich", "schedule": "complexity", "distill": True, "num_random": 1},
        {"strategy": "alternate", "lora": True, "lora_dropout": 0.1, "lr": 3e-2},
        {"strategy": "sandwich", "num_random": 1, "routing": "mixture", "experts": 2, "lr": 3e-2},
        {"strategy": "alternate", "routing": "split", "split_samples": 4, "split_batches": 1, "lr": 3e-2},
        {"strategy": "sandwich", "num_random": 1, "routing": "precision", "space": "BITS", "lr": 3e-2},
        {
            "strategy": "sandwich",
            "num_random": 1,
            "ticket_sparsity": 0.5,
            "ticket_start": 0.0,
            "ticket_every": 2,
        },
    ],
    ids=[
        "sandwich-complexity-distill",
        "alternate-lora",
        "sandwich-mixture",
        "alternate-split",
        "sandwich-precision",
        "tickets",
    ],
)
def test_resume_equals_an_uninterrupted_run(tiny, tmp_path, kw):
    if kw.get("lora"):
        pytest.importorskip("peft")
    if kw.get("space") == "BITS":
        kw = {**kw, "space": str(bits_space(tmp_path))}
    whole = finetune(args_for(tiny, tmp_path / "whole", steps=8, save_every=3, **kw), progress=False)

    args = args_for(tiny, tmp_path / "cut", steps=8, save_every=3, **kw)

    def stop_at_5(step, losses):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(args, callback=stop_at_5, progress=False)
    ckpt = tmp_path / "cut" / "checkpoint"
    assert json.loads((ckpt / "args.json").read_text())["steps"] == 8
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    assert state["step"] == 3
    # Plain strings, not enum members: checkpoints stay readable without this version's classes.
    assert type(state["sampler"]["schedule"]) is str
    assert {type(r["role"]) for r in state["records"]} == {str}
    seen = []
    resumed = finetune(args, callback=lambda step, losses: seen.append(step), progress=False)
    assert seen == [4, 5, 6, 7, 8]
    assert not ckpt.exists()  # removed once training finished
    a, b = whole.supernet.model.state_dict(), resumed.supernet.model.state_dict()
    if kw.get("routing"):  # the base is frozen: what trained are the routed adapters
        a, b = whole.supernet.routing.state_dict(), resumed.supernet.routing.state_dict()
        assert resumed.supernet.routing.spec == whole.supernet.routing.spec
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)
    rows_whole, rows_resumed = read_rows(whole.out / "losses.csv"), read_rows(resumed.out / "losses.csv")
    key = lambda rows: [(x["step"], x["series"], x["params"]) for x in rows]  # noqa: E731
    assert key(rows_whole) == key(rows_resumed)
    losses = lambda rows: [float(x["loss"]) for x in rows]  # noqa: E731
    np.testing.assert_allclose(losses(rows_resumed), losses(rows_whole), rtol=1e-4)
    assert resumed.record["tokens"] == whole.record["tokens"]


def test_resume_refuses_different_arguments(tiny, tmp_path):
    args = args_for(tiny, tmp_path / "sn", steps=6, save_every=2)

    def stop(step, losses):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(args, callback=stop, progress=False)
    changed = dataclasses.replace(args, lr=5e-3)
    with pytest.raises(LlamanasError, match=r"different arguments \(lr: 0.005 now vs 0.01 there\)"):
        finetune(changed, progress=False)
    # save_every may change between runs, and the folder may move: neither changes the result.
    moved = tmp_path / "moved"
    (tmp_path / "sn").rename(moved)
    done = finetune(dataclasses.replace(args, save_every=5, out=str(moved)), progress=False)
    assert done.record["steps"] == 6


def test_saved_super_network_loads_without_reordering(tiny, tmp_path, monkeypatch):
    model_dir, data = tiny
    result = finetune(
        args_for(tiny, tmp_path / "sn", strategy="sandwich", num_random=1, eval_size=4), progress=False
    )
    meta = json.loads((result.out / SUPERNET_FILE).read_text())
    assert meta["ordered"] is True
    assert SearchSpace.from_saved(meta["space"]) == result.supernet.space
    training = meta["training"]
    assert TuneArgs.from_dict(training["args"]) == args_for(
        tiny, tmp_path / "sn", strategy="sandwich", num_random=1, eval_size=4
    )
    for key in ("steps", "tokens", "wall_time_s", "final_losses", "lr", "epochs"):
        assert key in training
    assert set(training["final_losses"]["held_out"]) == {"largest", "smallest"}
    assert all(v > 0 for v in training["final_losses"]["held_out"].values())

    def no_reordering(*a, **k):
        raise AssertionError("a trained super-network must not be re-ordered")

    monkeypatch.setattr("llamanas.supernet.elastic.order_model", no_reordering)
    loaded, tok = load_supernet(str(result.out))
    assert loaded.space == result.supernet.space
    ids = torch.tensor([tok("Name color number 3.")["input_ids"]])
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for cfg in (SubnetConfig.full(loaded.arch), loaded.space.smallest(), loaded.space.sample(rng)):
            with loaded.subnet(cfg), result.supernet.subnet(cfg):
                torch.testing.assert_close(loaded.model(ids).logits, result.supernet.model(ids).logits)
    # Finished: the same command returns the record without training again; other arguments are refused.
    again = finetune(
        args_for(tiny, tmp_path / "sn", strategy="sandwich", num_random=1, eval_size=4),
        callback=no_reordering,
        progress=False,
    )
    assert again.record == training
    with pytest.raises(LlamanasError, match="already holds a super-network trained with different arguments"):
        finetune(args_for(tiny, tmp_path / "sn", strategy="alternate", eval_size=4), progress=False)


def test_fine_tuning_a_super_network_keeps_its_space(tiny, tmp_path, monkeypatch):
    """A trained super-network given as --model is not re-ordered and keeps its (narrowed) space."""
    model_dir, data = tiny
    space_file = tmp_path / "space.yaml"
    space_file.write_text("mlp_choices: [0.5, 1.0]\nkv_groups: [2]\n")
    first = finetune(args_for(tiny, tmp_path / "a", steps=2, space=str(space_file)), progress=False)
    monkeypatch.setattr("llamanas.tuning.trainer.order_model", lambda *a, **k: pytest.fail("re-ordered"))
    second = finetune(
        args_for(tiny, tmp_path / "b", steps=2, model=str(first.out), space=None), progress=False
    )
    assert second.supernet.space == first.supernet.space
    assert second.supernet.space.mlp_choices[0] == (32, 64)


def test_strategies_constant():
    assert STRATEGIES == ("full", "alternate", "sandwich")


def test_progressive_adds_block_skipping_last():
    s = Sampler(space_30(blocks=True), "progressive", total_steps=100, seed=0, stages=4)
    early = [s.sample(0) for _ in range(50)]
    assert all(0 not in c.mlp and 0 not in c.kv_groups for c in early)
    late = [s.sample(99) for _ in range(200)]
    assert any(0 in c.kv_groups for c in late) and any(0 in c.mlp for c in late)


def test_finetune_in_the_block_space(tiny, tmp_path):
    """Sub-networks without attention or MLP blocks train like the others (the default space)."""
    result = finetune(args_for(tiny, tmp_path / "b", steps=3, space=None), progress=False)
    assert result.supernet.space.kv_choices[0][0] == 0
    rows = read_rows(result.out / "losses.csv")
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
