"""Tokenized-shard reading for training: sources (Megatron .bin/.idx, OLMo .npy) and the
deterministic, layout-independent global sample order (`pretrain.data.loader`)."""

from pretrain.data.loader import DataLoader, DataOrder, build_data_order, global_batch

__all__ = ["DataLoader", "DataOrder", "build_data_order", "global_batch"]
