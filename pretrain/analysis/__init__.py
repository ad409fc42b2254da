"""`pretrain analyze`: one module per command (batch, eval_loss, memorization, compare, scaling_fit,
weights, report), what they share in common.py, the argument parser in cli.py."""
