"""The Slurm executor on a real two-node Slurm cluster started on this machine (docs/architecture.md has the recipe).

Each stage is submitted as a job array depending (afterok) on the previous stage's job. The result must
equal a local run's. With CI=true a missing Slurm is a failure (CI installs slurm-wlm through
.ci/install-system-packages); elsewhere the test skips.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from data_pipeline.cli import main
from tests.data_pipeline.helpers import write_jsonl_gz

NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def _slurm_or_skip():
    missing = [b for b in NEEDED if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
    if missing or os.geteuid() != 0:
        why = f"Slurm not usable here (missing {missing}, root={os.geteuid() == 0})"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; CI must install slurm-wlm (.ci/install-system-packages)")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    _slurm_or_skip()
    d = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname()
    ctl, p1, p2 = _free_port(), _free_port(), _free_port()
    for sub in ("state", "spool1", "spool2", "log"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=dptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl}
AuthType=auth/none
CredType=cred/none
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MaxArraySize=1001
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={p1} CPUs=2 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={p2} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = [
        subprocess.Popen(
            ["slurmctld", "-D", "-c", "-f", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    time.sleep(1.5)
    for n in ("n1", "n2"):
        procs.append(
            subprocess.Popen(
                ["slurmd", "-D", "-N", n, "-f", str(conf)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    ok = False
    for _ in range(60):
        r = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True
        )
        states = dict(l.split() for l in r.stdout.splitlines() if l.strip())
        if len(states) == 2 and all(s in ("idle", "mix", "alloc") for s in states.values()):
            ok = True
            break
        time.sleep(0.5)
    if not ok:
        for p in procs:
            p.terminate()
        log = (
            (d / "log" / "slurmctld.log").read_text()[-2000:]
            if (d / "log" / "slurmctld.log").exists()
            else ""
        )
        pytest.fail(f"local Slurm cluster did not come up: {r.stdout} {r.stderr}\n{log}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield {"conf": conf, "dir": d}
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_slurm_job_arrays_with_dependencies_match_local_run(slurm_cluster, tmp_path, samples_en):
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
                "executor.slurm.cpus_per_task=2",
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
