"""FlexAttention with a block mask from document ids, and the sliding window, against the
dense-mask SDPA path (the reference: what `data.intra_doc_mask=true` ran before), in float64 on
CPU: the claim is that both compute the same attention, so float64 rounding bounds them.

torch 2.13's FlexAttention runs forward on CPU (eagerly) but refuses backward there, so the kernel
comparison is forward-only; the training path of the window (dense mask on CPU) is compared with
its definition, and under TP2/PP2 in tests/parallel/test_parity_attention.py.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from configcore import ConfigError
from model_zoo import build_model, get_model_config
from model_zoo.layers import AttentionMasks, document_attention_mask, resolve_attention_kernel
from pretrain.parity.harness import FP64_TOL, packed_ids, text_batches

TOL = FP64_TOL  # float64 parity (pretrain/parity/harness.py derives it)


def packed_text(batch=2, seq=48):
    """Real text (man pages), each line a document: several documents in the batch."""
    inputs = text_batches(1, batch, seq)[0, :, :-1]
    doc, pos = packed_ids(inputs)
    assert doc.max() > 0
    return inputs, doc, pos


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize(
    "name,window", [("llama3-tiny", 0), ("llama3-tiny", 8), ("deepseek-v3-tiny", 0)]
)
def test_flex_block_mask_equals_dense_mask(name, window):
    """Logits of the whole model (GQA llama / MLA + MoE DeepSeek-V3) with the FlexAttention
    block mask equal those with the dense SDPA mask, with and without a sliding window."""
    cfg = dataclasses.replace(get_model_config(name), sliding_window=window)
    dense = build_model(dataclasses.replace(cfg, attention_kernel="sdpa"), seed=3).double()
    flex = build_model(dataclasses.replace(cfg, attention_kernel="flex"), seed=3).double()
    inputs, doc, pos = packed_text()
    with torch.no_grad():
        ref = dense(inputs, position_ids=pos, document_ids=doc)
        out = flex(inputs, position_ids=pos, document_ids=doc)
    print(f"{name} window {window}: relative difference {rel(out, ref):.1e}")
    assert rel(out, ref) < TOL


def test_dense_mask_is_the_definition():
    """The reference itself, position by position: token i sees token j iff j <= i, same
    document, and i - j < window."""
    _, doc, _ = packed_text()
    mask = document_attention_mask(doc, sliding_window=5)[:, 0]
    i, j = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    for b in range(2):
        want = (j <= i) & (i - j < 5) & (doc[b][:, None] == doc[b][None, :])
        assert torch.equal(mask[b], want)


def test_sliding_window_without_documents_trains_as_masked_sdpa():
    """A window on plain causal attention: forward and backward of the model equal a model whose
    attention is the explicit banded mask (gradients compared too: this is the training path)."""
    cfg = dataclasses.replace(get_model_config("llama3-tiny"), sliding_window=6)
    inputs = text_batches(1, 2, 32)[0, :, :-1]
    model = build_model(cfg, seed=1).double()
    logits = model(inputs)
    F.cross_entropy(logits.flatten(0, 1), inputs.flatten()).backward()
    ones = torch.zeros_like(inputs)  # one document per row: only causality and the window
    full = build_model(dataclasses.replace(cfg, sliding_window=0), seed=1).double()
    band = document_attention_mask(ones, sliding_window=6)
    full.attention_masks.build = lambda *a, **k: band
    ref = full(inputs)
    F.cross_entropy(ref.flatten(0, 1), inputs.flatten()).backward()
    assert rel(logits, ref) < TOL
    for (n, p), q in zip(model.named_parameters(), full.parameters()):
        assert rel(p.grad, q.grad) < TOL, n
    # and the window changes the result (tokens past it are really cut off): by O(0.1), where
    # any rounding is below 1e-10
    assert (
        rel(ref, build_model(dataclasses.replace(cfg, sliding_window=0), seed=1).double()(inputs))
        > 1e-3
    )


def test_block_mask_cached_per_batch():
    """The same document-id tensor gets the same BlockMask object back; another batch, or the
    same tensor changed in place, gets a new one."""
    _, doc, _ = packed_text()
    masks = AttentionMasks("flex", 0)
    first = masks.build(doc, 2, 48, "cpu")
    assert masks.build(doc, 2, 48, "cpu") is first
    other = doc.clone()
    assert masks.build(other, 2, 48, "cpu") is not first
    doc[:, -1] += 1
    assert masks.build(doc, 2, 48, "cpu") is not first
    assert AttentionMasks("flex", 0).build(None, 2, 48, "cpu") is None  # plain causal: SDPA


def test_kernel_choice_and_validation():
    assert resolve_attention_kernel("auto", torch.device("cuda")) == "flex"
    assert resolve_attention_kernel("auto", torch.device("cpu")) == "sdpa"
    for bad, msg in (
        ({"attention_kernel": "flash"}, "attention_kernel='flash' is not one of auto, sdpa"),
        ({"sliding_window": -1}, "sliding_window=-1 must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=msg):
            dataclasses.replace(get_model_config("llama3-tiny"), **bad).validate()


def test_flex_refuses_backward_on_cpu():
    """Why `auto` is the dense mask on CPU: FlexAttention's backward does not exist there."""
    cfg = get_model_config("llama3-tiny")
    model = build_model(dataclasses.replace(cfg, attention_kernel="flex"))
    inputs, doc, pos = packed_text()
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        model(inputs, position_ids=pos, document_ids=doc)
