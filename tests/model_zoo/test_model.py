"""Decoder behaviour beyond HF parity: initialisation schemes, determinism, causality."""

import math

import pytest
import torch

from model_zoo import build_model, get_model_config
from pretrain.parity.harness import FP64_TOL

# An init test compares the sample std of a weight of N = rows x cols draws with the scheme's
# std: the sample std's relative standard error is 1/sqrt(2N), at most 1.1% for the tiny models'
# smallest matrix here (64 x 64), so rel=0.1 sits 9 standard errors out: it fails on a wrong
# scheme (the schemes differ by 2x and more), never on the draw.
INIT_REL = 0.1


def test_same_seed_same_weights_different_seed_different():
    cfg = get_model_config("llama3-tiny")
    a, b, c = (build_model(cfg, seed=s).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])


def test_meta_build_then_init_equals_direct_build():
    cfg = get_model_config("olmo2-tiny")
    direct = build_model(cfg, seed=3).state_dict()
    lazy = build_model(cfg, device="meta")
    lazy.to_empty(device="cpu")
    lazy.init_weights(seed=3)
    assert all(torch.equal(direct[k], v) for k, v in lazy.state_dict().items())
    ref = build_model(cfg, seed=3)
    assert torch.equal(lazy.rope_cos, ref.rope_cos)


def test_each_parameter_is_generated_on_its_own():
    """What lets the parallel engine initialise a shard without a full model in memory: a
    parameter's initial value depends on (seed, name) only. A meta-device model (nothing
    allocated) yields every parameter of the built model, and a pipeline-style pruned copy
    (first two layers of a DeepSeek-V3-like MoE + MLA model) yields the same as the whole."""
    cfg = get_model_config("deepseek-v3-tiny")
    built = build_model(cfg, seed=5)
    meta = build_model(cfg, device="meta")
    for name, p in built.named_parameters():
        assert torch.equal(meta.initial_value(name, seed=5), p), name
    del meta.layers["2"]
    meta.output = None
    assert torch.equal(
        meta.initial_value("layers.1.moe.experts.w2", seed=5), built.layers["1"].moe.experts.w2
    )
    assert not torch.equal(
        meta.initial_value("layers.1.moe.experts.w2", seed=6), built.layers["1"].moe.experts.w2
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _std(t: torch.Tensor) -> float:
    return t.float().std().item()


def test_pythia_uses_small_init_and_wang_init():
    cfg = get_model_config("pythia-tiny")
    sd = build_model(cfg, seed=0).state_dict()
    d, layers = cfg.d_model, cfg.n_layers
    assert _std(sd["layers.0.attention.wq.weight"]) == pytest.approx(
        math.sqrt(2 / (5 * d)), rel=INIT_REL
    )
    assert _std(sd["layers.1.feed_forward.w2.weight"]) == pytest.approx(
        2 / (layers * math.sqrt(d)), rel=INIT_REL
    )
    assert torch.equal(sd["layers.0.attention_norm.weight"], torch.ones(d))
    assert torch.equal(sd["layers.0.attention.wq.bias"], torch.zeros(d))


def test_llama_scales_output_projections_by_depth():
    cfg = get_model_config("llama3-tiny")
    sd = build_model(cfg, seed=0).state_dict()
    assert _std(sd["layers.0.feed_forward.w1.weight"]) == pytest.approx(0.02, rel=INIT_REL)
    assert _std(sd["layers.0.feed_forward.w2.weight"]) == pytest.approx(
        0.02 / math.sqrt(2 * cfg.n_layers), rel=INIT_REL
    )


def test_olmo2_init_is_truncated_at_three_std():
    sd = build_model(get_model_config("olmo2-tiny"), seed=0).state_dict()
    w = sd["layers.0.feed_forward.w1.weight"]
    # the cut-off 0.06 as a float32 weight: one rounding (0.06 x 6e-8 = 4e-9) above 0.06 at most
    assert w.abs().max().item() <= 3 * 0.02 + 1e-7
    assert _std(w) == pytest.approx(0.02 * 0.986, rel=INIT_REL)  # a 3-sigma truncated normal


def test_tied_embeddings_share_one_tensor():
    from dataclasses import replace

    cfg = replace(get_model_config("llama3-tiny"), tie_embeddings=True)
    model = build_model(cfg)
    assert model.output.weight is model.tok_embeddings.weight


@pytest.mark.parametrize("name", ["pythia-tiny", "olmo2-tiny", "llama3-tiny"])
def test_attention_is_causal(name):
    cfg = get_model_config(name)
    model = build_model(cfg, seed=0).double().eval()  # float64: the claim is the math
    tokens = torch.randint(0, cfg.vocab_size, (1, 20))
    changed = tokens.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    # the prefix's logits: the same math on the same tokens, float64 rounding at most
    assert rel(a[0, :12], b[0, :12]) < FP64_TOL
    # the changed tokens' own logits move by O(1) (other inputs), far above any rounding
    assert rel(a[0, 12:], b[0, 12:]) > 1e-3


def test_vocab_is_padded_to_multiple():
    cfg = get_model_config("pythia-70m")
    model = build_model(cfg, device="meta")
    assert model.tok_embeddings.weight.shape[0] == 50304 == model.output.weight.shape[0]


@pytest.mark.parametrize("name", ["llama3-tiny", "pythia-tiny", "deepseek-v3-tiny"])
def test_intra_document_mask_equals_running_documents_separately(name):
    """A packed sample with document ids and per-document positions computes, for every
    document, exactly what the model computes on that document alone."""
    cfg = get_model_config(name)
    model = build_model(cfg, seed=0).double().eval()  # float64: the claim is the math
    lengths = [7, 12, 5]
    docs = [
        torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
        for n in lengths
    ]
    packed = torch.cat(docs, dim=1)
    document_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        together = model(packed, position_ids=positions, document_ids=document_ids)
        apart = torch.cat([model(d) for d in docs], dim=1)
        unmasked = model(packed, position_ids=positions)
    assert rel(together, apart) < FP64_TOL  # the same math per document: float64 rounding
    # without the mask documents mix: later documents' logits move by O(0.1), not by rounding
    assert rel(unmasked, apart) > 1e-3
