"""Shared by the Hugging Face parity tests."""

import copy

import torch


def randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)  # norm gains near 1, but not 1
            else:
                p.copy_(0.08 * noise)


def tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(seed))


def logits_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens)
    return getattr(out, "logits", out)  # transformers' models return an output object


def as_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy. transformers' MoE experts default to torch's grouped matmul, which has no
    float64 kernel: the copy runs its per-expert loop ("eager"), the same math."""
    model = copy.deepcopy(model).double()
    if hasattr(model, "set_experts_implementation") and model._can_set_experts_implementation():
        model.set_experts_implementation("eager")
    return model


def assert_close(ours: torch.nn.Module, theirs: torch.nn.Module, tokens: torch.Tensor) -> None:
    """`ours` and `theirs` compute the same function of `tokens`.

    The claim is the math, so it is checked in float64 (copies of both models): their logits
    must differ by less than float32 rounding moves either model, a floor measured here on the
    same tokens (each model's float32 logits against its own float64 run). A wrong formula (a
    norm's epsilon, a RoPE variant, a missing bias) moves logits by 1e-3 and more; what may
    legitimately remain in float64 is transformers' own float32 steps (its RMSNorm casts its input
    to float32, its RoPE builds cos/sin in float32, whatever the model's dtype): a subset of the
    roundings a float32 run makes, so below the floor (measured: 3-5x below).
    """
    with torch.no_grad():
        ours32, theirs32 = logits_of(ours, tokens), logits_of(theirs, tokens)
        ours64 = logits_of(as_float64(ours), tokens)
        theirs64 = logits_of(as_float64(theirs), tokens)
    assert ours32.shape == theirs32.shape == ours64.shape == theirs64.shape
    assert theirs64.dtype == ours64.dtype == torch.float64
    assert theirs32.std() > 0.1, "logits too small for the comparison to mean anything"
    floor = max((ours32 - ours64).abs().max().item(), (theirs32 - theirs64).abs().max().item())
    diff64 = (ours64 - theirs64).abs().max().item()
    diff32 = (ours32 - theirs32).abs().max().item()
    print(
        f"max abs logit difference: float64 {diff64:.1e}, float32 {diff32:.1e} (floor {floor:.1e})"
    )
    assert 0 < floor, "float32 and float64 runs equal: the models did not change dtype"
    assert diff64 < floor, f"float64 logits differ by {diff64:.2e}, above float32's {floor:.2e}"
