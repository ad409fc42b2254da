"""The table `pretrain zoo` prints: every named model with its parameter and FLOP counts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from model_zoo.counting import count_parameters, format_count, training_flops_per_token
from model_zoo.zoo import get_model_config, zoo_names


def zoo_table(seq_len: int) -> str:
    table = Table(
        title=f"model zoo (training FLOPs per token at seq_len={seq_len}, "
        "attention counted in full, not halved for causality)"
    )
    for col in ("name", "family", "total", "non-embedding", "active", "FLOPs/token"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    for name in zoo_names():
        cfg = get_model_config(name)
        count = count_parameters(cfg)
        flops = training_flops_per_token(cfg, min(seq_len, cfg.max_seq_len), count)
        table.add_row(
            name,
            cfg.family,
            f"{count.total:,}",
            f"{count.non_embedding:,}",
            format_count(count.active),
            format_count(flops, giga="G"),
        )
    console = Console(width=140, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()
