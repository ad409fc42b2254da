"""The data pipeline's Slurm executor on the session's real two-node Slurm cluster (conftest.py here;
the recipe is in docs/architecture.md), the same cluster the launcher's tests use.

Each stage is submitted as a job array depending (afterok) on the previous stage's job. The result must
equal a local run's. With CI=true a missing Slurm is a failure (CI installs slurm-wlm through
.ci/install-system-packages); elsewhere the test skips.
"""

from __future__ import annotations

import json

from data_pipeline.cli import main
from data_pipeline.sample_text import load_samples
from tests.data_pipeline.helpers import write_jsonl_gz


def test_slurm_job_arrays_with_dependencies_match_local_run(slurm_env, tmp_path):
    samples_en = load_samples("en")
    inp = tmp_path / "in"
    inp.mkdir()
    write_jsonl_gz(inp / "a.jsonl.gz", samples_en[:15])
    write_jsonl_gz(inp / "b.jsonl.gz", samples_en[15:30])
    args = [
        f"input.paths=[{inp}/*.jsonl.gz]",
        "executor.progress=false",
        "taggers.lang.paragraphs=false",
        "tokenizer.train.vocab_size=800",
        "dedup.paragraph.expected_paragraphs=100000",
        "dedup.minhash.partitions=2",
    ]
    local = tmp_path / "local"
    assert main([*args, f"output.dir={local}", "executor.workers=1"]) == 0
    out = tmp_path / "slurm"
    assert (
        main(
            [
                *args,
                f"output.dir={out}",
                "executor.type=slurm",
                "executor.slurm.poll_s=0.5",
                # a whole node per array element, so a stage's two elements run on both
                # nodes (asserted below)
                f"executor.slurm.cpus_per_task={slurm_env.cpus_per_node}",
            ]
        )
        == 0
    )
    scripts = sorted((out / "_work" / "slurm").glob("*.sbatch"))
    assert {s.stem for s in scripts} >= {
        "ingest",
        "tag",
        "dedup-hash",
        "dedup-bucket",
        "mix",
        "tokenize",
        "report",
    }
    assert "#SBATCH --array=0-1" in (out / "_work/slurm/ingest.sbatch").read_text()
    logs = list((out / "_work/slurm/logs").glob("*.out"))
    assert len(logs) >= 2 * 5 + 2, "one log per array element"
    a = json.loads((local / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    for k in ("input_docs", "kept_docs", "removed_docs", "tokens"):
        assert a[k] == b[k], k
    for p in sorted((local / "tokens").glob("*.bin")):
        assert p.read_bytes() == (out / "tokens" / p.name).read_bytes()
    # the array elements ran on both nodes
    nodes = set()
    for log in logs:
        nodes.update(
            l.split()[0].split("=", 1)[1]
            for l in log.read_text().splitlines()
            if l.startswith("node=")
        )
    assert nodes == {"n1", "n2"}, nodes
