"""Parallelism applied to a built zoo model from the outside: device mesh, TP/SP, pipeline, FSDP2/HSDP,
expert parallel, precision, activation checkpointing, compile; rank/env discovery. Imports model_zoo."""
