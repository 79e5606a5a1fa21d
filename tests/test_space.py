import numpy as np
import pytest

from llamanas.cli.tables import space_rows
from llamanas.errors import LlamanasError
from llamanas.model.arch import Arch
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from tests.conftest import tiny_model

ARCH = Arch(
    num_layers=6, hidden_size=64, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=16,
    vocab_size=128, tie_word_embeddings=True,
)  # fmt: skip


def test_default_space_choices():
    sp = SearchSpace.from_arch(ARCH, skip_attention=False, skip_mlp=False)
    assert sp.mlp_choices[0] == (64, 128, 192, 256)
    assert sp.kv_choices[0] == (1, 2)
    assert sp.min_depth == 3


def test_mlp_rounding_to_64():
    arch = Arch(**{**ARCH.__dict__, "intermediate_size": 1536})
    assert SearchSpace.from_arch(arch).mlp_choices[0] == (0, 384, 768, 1152, 1536)
    arch = Arch(**{**ARCH.__dict__, "intermediate_size": 100})  # too small for multiples of 64
    assert SearchSpace.from_arch(arch).mlp_choices[0] == (0, 24, 48, 72, 100)


def test_subnet_json_roundtrip_and_validation():
    cfg = SubnetConfig((0, 2, 5), (64, 256, 128), (1, 2, 2))
    assert SubnetConfig.from_json(cfg.to_json()) == cfg
    assert SubnetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(LlamanasError, match="one value per kept layer"):
        SubnetConfig((0, 1), (64,), (1, 1))
    with pytest.raises(LlamanasError, match="ascending"):
        SubnetConfig((2, 1), (64, 64), (1, 1))
    with pytest.raises(LlamanasError, match="Unknown sub-network config keys"):
        SubnetConfig.from_dict({**cfg.to_dict(), "heads": [1]})
    with pytest.raises(LlamanasError, match="not valid JSON"):
        SubnetConfig.from_json("{oops")
    with pytest.raises(LlamanasError, match="Layer 7 does not exist"):
        SubnetConfig((0, 7), (64, 64), (1, 1)).check(ARCH)
    with pytest.raises(LlamanasError, match="exceeds"):
        SubnetConfig((0,), (512,), (1,)).check(ARCH)


def test_vector_roundtrip_and_sampling():
    sp = SearchSpace.from_arch(ARCH)
    rng = np.random.default_rng(0)
    xl, xu = sp.bounds()
    assert len(xl) == len(sp.variable_names) == 3 * ARCH.num_layers
    seen = set()
    for _ in range(50):
        cfg = sp.sample(rng)
        sp.validate(cfg)
        x = sp.encode(cfg)
        assert (x >= xl).all() and (x <= xu).all()
        assert sp.decode(x) == cfg
        seen.add(cfg.key())
    assert len(seen) > 40  # sampling explores


def test_sampling_is_seeded():
    sp = SearchSpace.from_arch(ARCH)
    a = [sp.sample(np.random.default_rng(3)).key() for _ in range(3)]
    b = [sp.sample(np.random.default_rng(3)).key() for _ in range(3)]
    assert a == b


def test_repair_enforces_min_depth_and_always_keep():
    sp = SearchSpace.from_dict({"min_depth": 4, "always_keep": [5]}, ARCH)
    x = np.zeros(3 * ARCH.num_layers, dtype=int)
    cfg = sp.decode(x)
    assert cfg.depth == 4 and 5 in cfg.layers
    sp.validate(cfg)


def test_space_size_counts_exactly():
    arch = Arch(**{**ARCH.__dict__, "num_layers": 3})
    sp = SearchSpace.from_dict({"min_depth": 2, "mlp_choices": [0.5, 1.0], "kv_groups": [2]}, arch)
    # depth 2: C(3,2) * 2^2 ; depth 3: 2^3
    assert sp.size() == 3 * 4 + 8
    # brute force over vectors gives the same count of distinct configs
    import itertools

    xl, xu = sp.bounds()
    configs = {
        sp.decode(np.array(x)).key()
        for x in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(xl, xu, strict=True)])
    }
    assert len(configs) == sp.size()


def test_first_n_mode():
    sp = SearchSpace.from_dict({"mode": "first_n", "depth_choices": [4, 6]}, ARCH)
    rng = np.random.default_rng(0)
    for _ in range(20):
        cfg = sp.sample(rng)
        assert cfg.layers == tuple(range(cfg.depth)) and cfg.depth in (4, 6)
        assert sp.decode(sp.encode(cfg)) == cfg
    with pytest.raises(LlamanasError, match="first_n"):
        sp.validate(SubnetConfig((0, 1, 2, 4), (256,) * 4, (2,) * 4))
    # per kept layer 5 MLP x 3 KV choices less (0, 0) = 14; the first layer keeps attention: 5 x 2 = 10
    assert sp.size() == 10 * 14**3 + 10 * 14**5


def test_space_file_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("mlp_choices: [0.5, 2048]\n")
    with pytest.raises(LlamanasError, match="exceeds"):
        SearchSpace.from_file(bad, ARCH)
    bad.write_text("depth: 3\n")
    with pytest.raises(LlamanasError, match="Unknown search-space keys"):
        SearchSpace.from_file(bad, ARCH)
    bad.write_text("mode: deep\n")
    with pytest.raises(LlamanasError, match="Unknown search-space mode 'deep'"):
        SearchSpace.from_file(bad, ARCH)
    with pytest.raises(LlamanasError, match="does not exist"):
        SearchSpace.from_file(tmp_path / "nope.yaml", ARCH)
    good = tmp_path / "s.json"
    good.write_text('{"mlp_choices": [128, 256], "layers": {"0": {"mlp_choices": [256]}}}')
    sp = SearchSpace.from_file(good, ARCH)
    assert sp.mlp_choices[0] == (256,) and sp.mlp_choices[1] == (128, 256)


def test_space_saved_roundtrip():
    sp = SearchSpace.from_dict({"mode": "first_n", "depth_choices": [4, 6], "kv_groups": [2]}, ARCH)
    assert SearchSpace.from_saved(sp.to_dict()) == sp


def test_num_params_matches_real_model(family):
    model = tiny_model(family)
    arch = Arch.from_hf(model.config)
    full = SubnetConfig.full(arch)
    assert full.num_params(arch) == sum(p.numel() for p in model.parameters())


def test_smallest_and_largest():
    sp = SearchSpace.from_arch(ARCH, skip_attention=False, skip_mlp=False)
    small, large = sp.smallest(), sp.largest()
    assert large == SubnetConfig.full(ARCH)
    assert small.depth == sp.min_depth and set(small.mlp) == {64} and set(small.kv_groups) == {1}
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = sp.sample(rng).num_params(ARCH)
        assert small.num_params(ARCH) <= n <= large.num_params(ARCH)


def test_precision_genes_roundtrip_count_and_validate():
    arch = Arch(**{**ARCH.__dict__, "num_layers": 3})
    sp = SearchSpace.from_dict(
        {
            "min_depth": 2,
            "mlp_choices": [0.5, 1.0],
            "kv_groups": [2],
            "bits": [4, 8, 16],
            "layers": {0: {"bits": [16]}},
        },
        arch,
    )
    assert sp.bits_choices == ((16,), (4, 8, 16), (4, 8, 16))
    assert sp.variable_names[-3:] == ("bits.0", "bits.1", "bits.2")
    assert sp.largest().bits == (16, 16, 16) and sp.smallest().bits in ((16, 4), (4, 4))
    # depth 2 over layers {0,1}, {0,2}: 2*1 * 2*3 each; {1,2}: (2*3)^2; depth 3: 2*(2*3)^2
    assert sp.size() == 2 * (2 * 6) + 36 + 2 * 36
    import itertools

    xl, xu = sp.bounds()
    configs = {
        sp.decode(np.array(x)).key()
        for x in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(xl, xu, strict=True)])
    }
    assert len(configs) == sp.size()
    rng = np.random.default_rng(0)
    for _ in range(30):
        cfg = sp.sample(rng)
        assert sp.decode(sp.encode(cfg)) == cfg and SubnetConfig.from_json(cfg.to_json()) == cfg
        assert cfg.bits[0 if cfg.layers[0] == 0 else -1] in (4, 8, 16)
    cfg = SubnetConfig((0, 1), (128, 256), (2, 2), (16, 8))
    assert cfg.quantized and cfg.to_dict()["bits"] == [16, 8]
    assert not SubnetConfig((0, 1), (128, 256), (2, 2), (16, 16)).quantized
    with pytest.raises(LlamanasError, match="Layer 0: 8 bits is not a choice; allowed: \\[16\\]"):
        sp.validate(SubnetConfig((0, 1), (128, 256), (2, 2), (8, 8)))
    with pytest.raises(LlamanasError, match="'bits' values \\[3\\] are not weight precisions"):
        SubnetConfig((0,), (128,), (2,), (3,))
    with pytest.raises(LlamanasError, match="Layer 1: 8 bits is not a choice; allowed: \\[16\\]"):
        SearchSpace.from_arch(arch).validate(cfg)  # a space without precision genes takes 16 bits only
    with pytest.raises(LlamanasError, match="bits must be a non-empty list drawn from \\[4, 8, 16\\]"):
        SearchSpace.from_dict({"bits": [2, 16]}, arch)
    with pytest.raises(LlamanasError, match="layers.1.bits needs a top-level 'bits'"):
        SearchSpace.from_dict({"layers": {1: {"bits": [8]}}}, arch)
    assert SearchSpace.from_saved(sp.to_dict()) == sp
    assert space_rows(sp)["weight bits"] == "4, 8, 16"


@pytest.mark.parametrize("spec", [{}, {"mode": "first_n", "depth_choices": [4, 6]}, {"bits": [4, 16]}])
def test_gene_layout_is_defined_once(spec):
    sp = SearchSpace.from_dict(spec, ARCH)
    n = ARCH.num_layers
    slices = sp.gene_slices()
    head = "depth" if sp.mode == "first_n" else "keep"
    assert list(slices) == [head, "mlp", "kv"] + (["bits"] if sp.bits_choices else [])
    assert slices["mlp"].stop - slices["mlp"].start == n and slices["kv"].start == slices["mlp"].stop
    assert max(s.stop for s in slices.values()) == len(sp.variable_names) == len(sp.bounds()[1])
    for group, s in slices.items():
        assert all(name.split(".")[0] == group for name in sp.variable_names[s])
    rng = np.random.default_rng(0)
    cfgs = [sp.sample(rng) for _ in range(20)]
    X = np.array([sp.encode(c) for c in cfgs])
    genes = sp.split_genes(X)
    assert genes["mlp"].shape == genes["kv"].shape == (20, n)
    for x, cfg in zip(X, cfgs, strict=True):
        one = sp.split_genes(x)
        assert sp.join_genes(one).tolist() == x.tolist()
        assert np.flatnonzero(sp.kept(x)).tolist() == list(cfg.layers)
        assert [sp.mlp_choices[i][one["mlp"][i]] for i in cfg.layers] == list(cfg.mlp)
    assert sp.kept(X).tolist() == [[i in c.layers for i in range(n)] for c in cfgs]
    # Skipped layers' genes do not matter: canonical() writes the filler encode() writes.
    noisy = X.copy()
    noisy_genes = sp.split_genes(noisy)  # views: writing them writes noisy
    noisy_genes["mlp"][~sp.kept(X)] = 0
    noisy_genes["kv"][~sp.kept(X)] = 0
    assert np.array_equal(sp.canonical(noisy), X) and not np.array_equal(sp.canonical(noisy), noisy)
    assert [sp.decode(x) for x in noisy] == cfgs


@pytest.mark.parametrize(
    "spec",
    [
        {"skip_attention": False, "skip_mlp": False},  # widths and layer drops only
        {"skip_attention": False, "skip_mlp": False, "min_depth": 5, "always_keep": [1, 4]},
        {},  # block skips
        {"min_depth": 6, "mlp_choices": [0, 1.0], "kv_groups": [0, 2]},  # every layer kept, often blockless
        {"layers": {"3": {"kv_groups": [0]}, "4": {"mlp_choices": [0]}}, "always_keep": [0], "min_depth": 1},
        {"mode": "first_n", "depth_choices": [3, 4, 6]},
        {"mode": "first_n", "depth_choices": [2, 5], "min_depth": 2, "skip_attention": False},
        {"bits": [4, 8, 16], "always_keep": [0]},
    ],
)
def test_repair_rows_match_single_vectors(spec):
    """Repair is vectorised over rows (the search repairs whole populations): every row comes out as it
    would alone, inside the space, and repairing again changes nothing."""
    sp = SearchSpace.from_dict(spec, ARCH)
    xl, xu = sp.bounds()
    X = np.random.default_rng(0).integers(xl - 1, xu + 2, size=(400, len(xl)))  # out of bounds too
    R = sp.repair(X)
    assert R.shape == X.shape and np.array_equal(R, sp.repair(R))
    for x, r in zip(X, R, strict=True):
        assert np.array_equal(sp.repair(x), r)
        cfg = sp.validate(sp.decode(r))
        assert np.array_equal(sp.encode(cfg), sp.canonical(r))
