"""Shared by the Hugging Face parity tests."""

import torch

TOL = 1e-4


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


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.std() > 0.1, "logits too small for the comparison to mean anything"
    diff = (ours - theirs).abs().max().item()
    assert diff < TOL, f"max abs logit difference {diff:.3e} >= {TOL}"
