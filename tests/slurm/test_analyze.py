"""slurm/analyze.sbatch on the two-node test cluster (tests/slurm/conftest.py): one job array
over a tiny run's checkpoint series; the tasks split the checkpoints between them and together
give what one process gives."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time

from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.train import train
from tests.pretrain.helpers import ROOT, documents, tiny_overrides, write_megatron

TASKS = 3


def _array_states(cluster, job: str, timeout: float = 240) -> list[dict]:
    """Wait until no task of the array is pending or running; each task's scontrol record."""
    t0 = time.monotonic()
    while cluster.run("squeue", "-h", "-j", job).stdout.strip():
        assert time.monotonic() - t0 < timeout, cluster.run("squeue", "-j", job).stdout
        time.sleep(0.5)
    lines = cluster.run("scontrol", "show", "job", "-o", job).stdout.splitlines()
    return [dict(t.split("=", 1) for t in line.split() if "=" in t) for line in lines if line]


def test_eval_as_a_job_array_equals_one_process(slurm_env, tmp_path, capsys):
    d = tmp_path
    write_megatron(str(d / "tok/train/man"), documents(30, max_bytes=1200))
    write_megatron(str(d / "tok/val/man"), documents(10, start=100, max_bytes=1200))
    run_dir = d / "run"
    ov = tiny_overrides(
        run_dir, [str(d / "tok/train")], steps=6, **{"checkpoint.series": "first+every:1"}
    )
    train(compose_config(ov), log=lambda *_: None)
    val = str(d / "tok/val")
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "DATA": val,
        "MAX_TOKENS": "512",
        "PYTHONWARNINGS": "ignore",
    }
    res = subprocess.run(
        [
            "sbatch",
            f"--array=0-{TASKS - 1}",
            "--cpus-per-task=1",
            f"--output={d}/analyze-%A_%a.out",
            f"--chdir={ROOT}",
            str(ROOT / "slurm" / "analyze.sbatch"),
        ],
        capture_output=True,
        text=True,
        env={**env, "SLURM_CONF": str(slurm_env.conf)},
        check=True,
    )
    job = re.search(r"Submitted batch job (\d+)", res.stdout).group(1)
    states = _array_states(slurm_env, job)
    logs = {p.name: p.read_text() for p in d.glob(f"analyze-{job}_*.out")}
    assert len(states) == TASKS and all(s["JobState"] == "COMPLETED" for s in states), logs
    # each task evaluated its own share: 7 checkpoints over 3 tasks = 3 + 2 + 2, none twice
    evaluated = [
        int(m) for t in logs.values() for m in re.findall(r"eval: (\d+) checkpoints evaluated", t)
    ]
    assert sorted(evaluated) == [2, 2, 3], logs
    out = run_dir / "analysis" / "eval"
    steps = sorted(json.loads(p.read_text())["step"] for p in (out / "steps").glob("*.json"))
    assert steps == list(range(7)), (steps, logs)
    # one process, fresh, over the same run gives the same numbers
    args = ["analyze", "eval", str(run_dir), "--data", val, "--max-tokens", "512"]
    assert main([*args, "--out", str(d / "single")]) == 0
    assert "eval: 7 checkpoints evaluated, 0 already done" in capsys.readouterr().out
    tables = {}
    for name, folder in (("array", out), ("single", d / "single")):
        with open(folder / "eval.csv", newline="") as fh:
            tables[name] = {r["step"]: float(r["loss/val"]) for r in csv.DictReader(fh)}
    assert tables["array"] == tables["single"] and len(tables["single"]) == 7
    # and the array's folder is complete: a rerun finds every step done
    assert main(args) == 0
    assert "eval: 0 checkpoints evaluated, 7 already done" in capsys.readouterr().out
