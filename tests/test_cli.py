"""The command line on a tiny model folder, and its error messages."""

import importlib
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from llamanas import cli
from llamanas.cli import commands_model
from llamanas.cli.app import app
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.model.load import load_config, load_model
from llamanas.search.files import RUN_FILE
from llamanas.supernet.subnet import SubnetConfig

app_module = importlib.import_module("llamanas.cli.app")  # ``llamanas.cli.app`` is also the Typer app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def test_space_prints_table_and_samples(tiny_dir):
    r = run("space", "--model", tiny_dir)
    assert r.exit_code == 0, r.output
    assert "sub-networks" in r.output and "per_layer" in r.output and "(width)" in r.output
    full = run("space", "--model", tiny_dir, "--space", "full", "--json")
    assert (
        json.loads(full.stdout)["min_depth"]
        < json.loads(run("space", "--model", tiny_dir, "--json").stdout)["min_depth"]
    )
    r = run("space", "--model", tiny_dir, "--sample", 3, "--seed", 5)
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert len(lines) == 3 and all(set(x) == {"layers", "mlp", "kv_groups"} for x in lines)
    again = run("space", "--model", tiny_dir, "--sample", 3, "--seed", 5)
    assert again.output == r.output


def test_measure_json(tiny_dir):
    sub = '{"layers": [0, 1], "mlp": [48, 48], "kv_groups": [1, 1]}'
    r = run("measure", "--model", tiny_dir, "--subnet", sub, "--json", "--repeats", 2, "--gen-tokens", 4)
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert (
        m["params"]
        < json.loads(run("measure", "--model", tiny_dir, "--json", "--no-timing").stdout)["params"]
    )
    assert m["latency_ms"] > 0 and m["throughput_tok_s"] > 0
    assert m["bytes"] == 4 * m["params"]
    assert m["kv_bytes_per_token"] == 2 * 2 * 1 * 16 * 2  # 2 layers x K and V x 1 group x head 16 x 2 B


def test_measure_at_long_context_without_attention(tiny_dir):
    """--context times decoding after a long prompt in HF too; a layer without attention keeps no cache."""
    sub = '{"layers": [0, 1], "mlp": [48, 96], "kv_groups": [2, 0]}'
    r = run("measure", "--model", tiny_dir, "--subnet", sub, "--json", "--repeats", 1, "--gen-tokens", 2,
            "--context", "8,64")  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [m["gen_context"] for m in rows] == [8, 64] and [m["prefill_tokens"] for m in rows] == [8, 64]
    assert rows[0]["kv_bytes_per_token"] == 2 * 2 * 16 * 2  # layer 0 only: K and V, 2 groups of 16, 2 B
    r = run("measure", "--model", tiny_dir, "--context", "0")
    assert "--context values must be in 1.." in str(r.exception)


def test_extract_cli_roundtrip(tiny_dir, tmp_path):
    sub = tmp_path / "sub.json"
    sub.write_text('{"layers": [0, 2, 3], "mlp": [96, 24, 48], "kv_groups": [2, 1, 2]}')
    out = tmp_path / "small"
    r = run("extract", "--model", tiny_dir, "--subnet", sub, "--out", out)
    assert r.exit_code == 0, r.output
    model, tok = load_model(str(out))
    assert model.config.num_hidden_layers == 3
    assert tok("w1 w2")["input_ids"] == [3, 4]
    ids = torch.tensor([[3, 4, 5, 6]])
    assert model(ids).logits.shape == (1, 4, 128)


@pytest.mark.parametrize(
    "args, message",
    [
        (("space", "--model", "/no/such/dir"), "not found"),
        (("space", "--model", "not-a-hub-id"), "not found"),
        (("measure", "--subnet", "{bad json"), "not valid JSON"),
        (("measure", "--repeats", 0), "--repeats must be >= 1"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, tiny_dir):
    args = [a if a != "--subnet" else a for a in args]
    if args[0] == "measure":
        args = [*args, "--model", tiny_dir]
    r = run(*args)
    assert r.exit_code != 0
    assert isinstance(r.exception, LlamanasError) and message in str(r.exception)


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(
        LlamanasError, match="Model type 'gpt2' .* not supported. Supported model types: llama"
    ):
        load_model(str(tmp_path / "gpt2"))


def test_corrupt_checkpoint(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(LlamanasError, match="Cannot load model .*corrupt"):
        load_model(str(tiny_dir))


def test_subnet_that_does_not_fit(tiny_dir):
    r = run(
        "extract",
        "--model",
        tiny_dir,
        "--subnet",
        '{"layers": [0], "mlp": [4096], "kv_groups": [1]}',
        "--out",
        tiny_dir / "x",
    )
    assert "exceeds the model's intermediate size 96" in str(r.exception)


def test_main_prints_error_line(tiny_dir, capsys, monkeypatch):

    monkeypatch.setattr("sys.argv", ["llamanas", "space", "--model", "/no/such"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Model '/no/such' not found.") and err.count("\n") == 1


def test_extract_quantize_writes_a_smaller_checkpoint_that_eval_reads(tiny_dir, tmp_path):
    from llamanas.deploy.quantize import load_quantized
    from llamanas.model.arch import Arch
    from llamanas.supernet.precision import QuantLinear, policy_bytes
    from llamanas.supernet.subnet import SubnetConfig

    sub = '{"layers": [0, 2, 3], "mlp": [96, 24, 48], "kv_groups": [2, 1, 2]}'
    r = run("extract", "--model", tiny_dir, "--subnet", sub, "--out", tmp_path / "fp", "--no-order")
    assert r.exit_code == 0, r.output
    r = run(
        "extract",
        "--model",
        tiny_dir,
        "--subnet",
        sub,
        "--out",
        tmp_path / "q",
        "--no-order",
        "--quantize",
        "int8",
    )
    assert r.exit_code == 0, r.output
    assert "int8" in r.output
    fp, _ = load_model(str(tmp_path / "fp"))
    q, tok = load_quantized(tmp_path / "q")
    assert tok is not None and isinstance(q.get_decoder().layers[1].mlp.down_proj, QuantLinear)
    info = json.loads((tmp_path / "q" / "llamanas_quant.json").read_text())
    arch = Arch.from_hf(load_model(str(tiny_dir))[0].config)
    cfg = SubnetConfig.from_dict(json.loads(sub))
    assert info["subnet"] == json.loads(sub) and info["bytes"] == policy_bytes(arch, cfg, [8, 8, 8])
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        a, b = fp(ids).logits, q(ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    r = run("eval", "--model", tmp_path / "q", "--tasks", "arc_easy", "--split", "validation", "--limit", "3")
    assert r.exit_code == 0, r.output
    assert "(int8)" in r.output and "arc_easy" in r.output
    r = run("extract", "--model", tiny_dir, "--subnet", sub, "--out", tmp_path / "x", "--quantize", "int3")
    assert isinstance(r.exception, LlamanasError) and "'int3'" in str(r.exception)
    assert not (tmp_path / "x").exists()


# --- GGUF export and llama.cpp ---------------------------------------------------------------------
SUB = '{"layers": [0, 2, 3], "mlp": [96, 32, 64], "kv_groups": [2, 1, 2]}'


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A tiny model llama.cpp accepts (head size 32) with a byte-level BPE tokenizer, saved as a folder."""
    from test_gguf import bpe_tokenizer, model_of

    path = tmp_path_factory.mktemp("bpe") / "tiny-bpe"
    model_of().save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gguf_file(bpe_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "sub.gguf"
    r = run("export", "--model", bpe_dir, "--subnet", SUB, "--out", path, "--type", "f32", "--no-order")
    assert r.exit_code == 0, r.output
    return path


def test_export_writes_gguf(bpe_dir, gguf_file):
    from llamanas.deploy.gguf import read_gguf_info
    from llamanas.model.arch import Arch
    from llamanas.model.load import load_config
    from llamanas.supernet.subnet import SubnetConfig

    info = read_gguf_info(gguf_file)
    cfg = SubnetConfig.from_json(SUB)
    assert (info.arch, info.type, info.n_layers) == ("deci", "f32", 3) and info.subnet == cfg.to_dict()
    assert info.n_params == cfg.num_params(Arch.from_hf(load_config(str(bpe_dir))))


def test_export_bad_input_leaves_no_file(bpe_dir, gguf_file, tmp_path):
    before = gguf_file.read_bytes()
    r = run("export", "--model", bpe_dir, "--out", gguf_file)
    assert isinstance(r.exception, LlamanasError) and "exists; pass --overwrite" in str(r.exception)
    assert gguf_file.read_bytes() == before
    for args, message in [
        (("--type", "q4_k"), "--type 'q4_k' is not a GGUF type; allowed: f32, f16, q8_0, q4_0"),
        (("--subnet", '{"layers": [0], "mlp": [4096], "kv_groups": [1]}'), "exceeds"),
        (("--tokenizer", tmp_path / "nope"), "not found"),
    ]:
        r = run("export", "--model", bpe_dir, "--out", tmp_path / "x.gguf", *args)
        assert isinstance(r.exception, LlamanasError) and message in str(r.exception), r.output
    r = run("export", "--model", bpe_dir, "--out", tmp_path / "x.bin")
    assert "must end in .gguf" in str(r.exception)
    assert list(tmp_path.iterdir()) == []


def test_main_exit_code_2_for_export_error(bpe_dir, gguf_file, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["llamanas", "export", "--model", str(bpe_dir), "--out", str(gguf_file)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err


def test_export_needs_a_bpe_tokenizer(tiny_dir, tmp_path):
    r = run("export", "--model", tiny_dir, "--out", tmp_path / "t.gguf")
    assert isinstance(r.exception, LlamanasError) and "not a byte-level BPE" in str(r.exception)
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*tmp*")) == []


def test_extract_gguf_beside_checkpoint(bpe_dir, tmp_path):
    from llamanas.deploy.gguf import read_gguf_info

    r = run("extract", "--model", bpe_dir, "--subnet", SUB, "--out", tmp_path / "small", "--gguf", "q8_0")
    assert r.exit_code == 0, r.output
    info = read_gguf_info(tmp_path / "small" / "model-q8_0.gguf")
    assert info.type == "q8_0" and info.n_layers == 3
    r = run("extract", "--model", bpe_dir, "--subnet", SUB, "--out", tmp_path / "s2", "--gguf", "int8")
    assert "--gguf 'int8' is not a GGUF type" in str(r.exception) and not (tmp_path / "s2").exists()


def test_measure_llamacpp_fields(bpe_dir, gguf_file):
    pytest.importorskip("llama_cpp")
    common = ("--runtime", "llamacpp", "--json", "--repeats", 1, "--gen-tokens", 2, "--threads", 1)
    for args in (("--model", bpe_dir, "--subnet", SUB, "--context", "8,32"), ("--model", gguf_file)):
        r = run("measure", *args, *common)
        assert r.exit_code == 0, r.output
        m = json.loads(r.stdout)
        assert m["runtime"] == "llamacpp" and m["subnet"] == json.loads(SUB)
        for k in ("params", "bytes", "file_bytes", "peak_rss_bytes", "latency_ms", "throughput_tok_s"):
            assert m[k] > 0, k
        assert m["file_bytes"] > m["bytes"] and m["gen_tokens"] == 2 and m["threads"] == 1
        assert all(c["prefill_tokens_per_s"] > 0 and c["decode_tokens_per_s"] > 0 for c in m["contexts"])
    assert [c["prompt_tokens"] for c in m["contexts"]] == [
        128,
        254,
    ]  # default: 128 and 1024 capped by 256 - 2
    r = run("measure", "--model", bpe_dir, "--runtime", "tvm")
    assert "--runtime 'tvm' is unknown" in str(r.exception)
    r = run("measure", "--model", bpe_dir, "--threads", "1")
    assert "--threads applies to --runtime llamacpp" in str(r.exception)
    r = run("measure", "--model", gguf_file, "--runtime", "llamacpp", "--context", "999")
    assert "--context values must be in 1..224" in str(r.exception)


def test_eval_gguf_equals_eval_hf(bpe_dir, gguf_file, tmp_path):
    from conftest import arc_available

    pytest.importorskip("llama_cpp")
    if not arc_available():
        pytest.skip("task data not available offline")
    common = ("--tasks", "arc_easy", "--split", "validation", "--limit", 5)
    r = run("eval", "--model", gguf_file, *common, "--json", tmp_path / "g.json")
    assert r.exit_code == 0, r.output
    assert "llama.cpp" in r.output and "n_ctx" not in r.output
    r = run("eval", "--model", bpe_dir, "--subnet", SUB, "--no-order", *common, "--json", tmp_path / "h.json")
    assert r.exit_code == 0, r.output
    g, h = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "gh")
    assert g["runtime"] == "llamacpp" and g["params"] == h["params"] and g["subnet"] == h["subnet"]
    for m in ("acc", "acc_norm"):
        assert g["results"]["arc_easy"]["metrics"][m] == h["results"]["arc_easy"]["metrics"][m]
    assert g["results"]["arc_easy"]["metrics"]["gold_nll"] == pytest.approx(
        h["results"]["arc_easy"]["metrics"]["gold_nll"], abs=1e-3
    )
    r = run("eval", "--model", gguf_file, *common, "--subnet", SUB)
    assert "does not apply to a GGUF file" in str(r.exception)
    r = run("eval", "--model", tmp_path / "missing.gguf", *common)
    assert "does not exist" in str(r.exception)


def test_eval_records_dtype_and_bf16_stays_close(bpe_dir, tmp_path):
    from conftest import arc_available

    if not arc_available():
        pytest.skip("task data not available offline")
    common = ("--tasks", "arc_easy", "--split", "validation", "--limit", 8, "--device", "cpu")
    for dtype in ("float32", "bfloat16"):
        r = run("eval", "--model", bpe_dir, *common, "--dtype", dtype, "--json", tmp_path / f"{dtype}.json")
        assert r.exit_code == 0, r.output
    f32, b16 = (json.loads((tmp_path / f"{d}.json").read_text()) for d in ("float32", "bfloat16"))
    assert f32["dtype"] == "float32" and b16["dtype"] == "bfloat16"
    a, b = (x["results"]["arc_easy"]["metrics"]["gold_nll"] for x in (f32, b16))
    assert b == pytest.approx(a, rel=0.02)  # bf16 weights, float32 compute on the CPU: within 2% in nats
    r = run("eval", "--model", bpe_dir, *common, "--dtype", "fp8")
    assert isinstance(r.exception, LlamanasError) and "Unknown dtype 'fp8'" in str(r.exception)


# --- --subnet: one reader for every command, before any loading ------------------------------------------
MEMBER = {"layers": [0, 2, 3], "mlp": [96, 24, 48], "kv_groups": [2, 1, 2]}


@pytest.fixture
def run_member(tmp_path, monkeypatch):
    """``RUN_DIR/:7``, a member of a search run (the run's reader stubbed: only the config matters here)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_FILE).write_text("{}")
    members = {7: SimpleNamespace(config=SubnetConfig.from_dict(MEMBER))}
    monkeypatch.setattr(app_module, "load_run", lambda d: SimpleNamespace(member=members.__getitem__))
    return f"{run_dir}/:7"


def test_eval_and_measure_take_a_run_member(tiny_dir, run_member, tmp_path, monkeypatch):
    seen = {}

    def fake_evaluate(model, tokenizer, tasks, questions):
        seen.update(depth=len(model.get_decoder().layers), tasks=tasks, limit=questions.limit)
        return {}

    monkeypatch.setattr(commands_model, "evaluate", fake_evaluate)
    r = run("eval", "--model", tiny_dir, "--subnet", run_member, "--tasks", "arc_easy", "--limit", 3,
            "--no-order", "--json", tmp_path / "r.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen == {"depth": 3, "tasks": ["arc_easy"], "limit": 3}
    assert json.loads((tmp_path / "r.json").read_text())["subnet"] == MEMBER
    r = run("measure", "--model", tiny_dir, "--subnet", run_member, "--json", "--no-timing")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["subnet"] == MEMBER


def test_eval_json_of_an_extracted_checkpoint_reports_the_sub_network(tiny_dir, tmp_path, monkeypatch):
    """A non-uniform extracted folder evaluated as --model: its own size and config, not its base model's."""
    monkeypatch.setattr(commands_model, "evaluate", lambda model, tokenizer, tasks, questions: {})
    sub = {"layers": [0, 1, 3], "mlp": [48, 96, 24], "kv_groups": [2, 1, 2]}
    r = run(
        "extract", "--model", tiny_dir, "--subnet", json.dumps(sub), "--no-order", "--out", tmp_path / "x"
    )
    assert r.exit_code == 0, r.output
    r = run("eval", "--model", tmp_path / "x", "--tasks", "arc_easy", "--json", tmp_path / "x.json")
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "x.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert got["params"] == sum(p.numel() for p in loaded.parameters())
    assert got["params"] == SubnetConfig.from_dict(sub).num_params(Arch.from_hf(load_config(str(tiny_dir))))
    assert got["subnet"]["mlp"] == sub["mlp"] and got["subnet"]["kv_groups"] == sub["kv_groups"]


@pytest.mark.parametrize("command", ["eval", "measure", "extract", "export"])
@pytest.mark.parametrize(
    "spec, message",
    [
        ("{bad json", "not valid JSON"),
        ("no-such.json", "no such file"),
        ("no-run/:15", "'no-run/' holds no search run"),
        ('{"layers": [0], "mlp": [4096], "kv_groups": [1]}', "exceeds the model's intermediate size 96"),
    ],
)
def test_bad_subnet_fails_before_loading(command, spec, message, tiny_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --subnet was checked")

    monkeypatch.setattr(app_module, "load_supernet", no_loading)
    extra = {"eval": ("--tasks", "arc_easy"), "extract": ("--out", tmp_path / "x"),
             "export": ("--out", tmp_path / "x.gguf")}.get(command, ())  # fmt: skip
    r = run(command, "--model", tiny_dir, "--subnet", spec, *extra)
    assert isinstance(r.exception, LlamanasError), r.output
    text = str(r.exception)
    assert text.startswith(f"--subnet {spec!r}: ") and message in text and "\n" not in text


def test_a_config_dataclass_parameter_becomes_its_fields_flags():
    """`command` shows a parameter typed with a config dataclass as that dataclass's fields (help from their
    docstrings, defaults from the parameter's default) and rebuilds it for the function."""
    import typer

    from llamanas.cli.options import command
    from llamanas.evaluation.questions import Questions

    got = []
    demo = typer.Typer()

    @command(demo, "ask")
    def ask(name: str, questions: Questions = Questions(limit=5), loud: bool = False):
        got.append((name, questions, loud))

    @demo.command("other")
    def other():  # a second command, so typer keeps the sub-command names
        pass

    r = CliRunner().invoke(demo, ["ask", "x", "--split", "validation", "--offset", "3", "--loud"])
    assert r.exit_code == 0, r.output
    assert got == [("x", Questions(split="validation", limit=5, offset=3), True)]
    help_text = CliRunner().invoke(demo, ["ask", "--help"]).output
    assert "--num-fewshot" in help_text and "disjoint" in help_text
    r = CliRunner().invoke(demo, ["ask", "x", "--limit", "0"])
    assert isinstance(r.exception, LlamanasError) and "--limit" in str(r.exception)


def test_eval_passes_its_questions_and_refuses_a_bad_limit_before_loading(tiny_dir, monkeypatch):
    seen = []
    monkeypatch.setattr(commands_model, "evaluate", lambda m, tok, tasks, q: seen.append(q) or {})
    monkeypatch.setattr(commands_model, "results_table", lambda *a: "")
    r = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy", "--split", "test", "--limit", "7"]
    )
    assert r.exit_code == 0, r.output
    assert [(q.split, q.limit, q.seed, q.offset) for q in seen] == [("test", 7, 0, 0)]
    monkeypatch.setattr(commands_model, "_load", lambda *a, **k: pytest.fail("loaded before the check"))
    r = CliRunner().invoke(app, ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy", "--offset", "-1"])
    assert isinstance(r.exception, LlamanasError) and "--offset" in str(r.exception)
