"""megatron-core's IndexedDataset and IndexedDatasetBuilder (the shard format training reads).

A module of its own so the executor can name it in a stage's `preload`: importing megatron.core
is heavy (~5 s, it pulls in torch), so a process pool imports it once before it starts workers,
not once per worker. Importing megatron.core warns that Transformer Engine and Apex are missing;
they matter for its model code, not for its datasets.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

__all__ = ["IndexedDataset", "IndexedDatasetBuilder"]
