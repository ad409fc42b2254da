"""The pipeline's stages and their tasks, over the output folder layout:

    DIR/documents/part-NNNNN.jsonl.gz        Dolma documents (one shard per input file or piece)
    DIR/quarantine/part-NNNNN.jsonl.gz       bad input: {where, reason, excerpt}
    DIR/attributes/<group>/part-NNNNN.jsonl.gz   tagger/dedup attributes, same rows, same order
    DIR/removed/part-NNNNN.jsonl.gz          every document the mixer removed, with step and reason
    DIR/mixed/part-NNNNN-KKKK.jsonl.gz       the mix (bounded shards)
    DIR/tokenizer/tokenizer.json             trained BPE (when tokenizer.path is empty)
    DIR/tokens/part-NNNNN-KKKK.bin/.idx      Megatron indexed datasets
    DIR/tokens/metadata.json, tokenizer/     what the tokens are, and the tokenizer that made them
    DIR/report.json, report.txt, report.png
    DIR/_work/                               config, plan, markers, dedup signatures, Slurm scripts

Each stage is one task function registered with `@stage(...)` (base.py) in its own module here
(a stage that only finishes another's work sits with it: dedup's bucket and cluster steps with
dedup-hash, mix-count with mix, tokens-metadata with tokenize). The imports below are the
registration order and so the run order (a stage's `after` names stages registered before it),
and the registry (`STAGES`) is the only list of stage names: the CLI's words, the fingerprints,
the executors' jobs and the Slurm worker read it. Task counts (n = number of shards: input files,
a big one split into pieces; P = dedup.minhash.partitions): ingest n, tag n, dedup-hash n,
dedup-bucket P, dedup-cluster 1, dedup-paragraph 1, [mix-count n], mix n, tokenizer-train 1,
tokenize n, tokens-metadata 1, report 1.
"""

# Imported for their registrations, in run order: the order of these lines is the pipeline's.
# isort: off
from . import ingest  # noqa: F401
from . import tag  # noqa: F401
from . import dedup  # noqa: F401  (dedup-hash, dedup-bucket, dedup-cluster)
from . import dedup_paragraph  # noqa: F401
from . import mix  # noqa: F401  (mix-count, mix)
from . import tokenizer_train  # noqa: F401
from . import tokenize  # noqa: F401  (tokenize, tokens-metadata)
from . import report  # noqa: F401

# isort: on
from .base import STAGES, Run, load_run, prepare_run, stage, stage_groups

__all__ = ["STAGES", "Run", "load_run", "prepare_run", "stage", "stage_groups"]
