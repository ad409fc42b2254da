"""`pretrain mixture sweep --slurm` on the two-node test cluster (tests/slurm/conftest.py): the
swarm is one job array rendered from slurm/train.sbatch (USR1 -> checkpoint -> requeue, per task),
every array task trains its own proxy, and a proxy trained by the array equals the same config
trained in this process."""

from __future__ import annotations

import re

from pretrain.cli import main
from pretrain.config import compose_config
from pretrain.mixture import final_eval, load_sweep
from pretrain.train import train
from tests.pretrain.helpers import documents, read_metrics, tiny_overrides, write_megatron

N_PROXIES, STEPS = 3, 4


def test_sweep_runs_as_one_job_array(slurm_env, tmp_path, capsys, monkeypatch):
    d = tmp_path
    write_megatron(str(d / "tok/a/man"), documents(16, max_bytes=1200))
    write_megatron(str(d / "tok/b/man"), documents(16, start=150, max_bytes=1200))
    write_megatron(str(d / "tok/val/man"), documents(6, start=250, max_bytes=1200))
    base = [
        o
        for o in tiny_overrides("unused", [], steps=STEPS)
        if o.split("=", 1)[0] not in ("data.paths", "run_dir")
    ]
    base += ["eval.max_tokens=512"]
    sources = ["--source", f"a={d / 'tok/a'}", "--source", f"b={d / 'tok/b'}"]
    argv = ["mixture", "sweep", *base, *sources, "--val", f"val={d / 'tok/val'}"]
    argv += ["--target", "val", "--n", str(N_PROXIES), "--out", str(d / "sweep"), "--slurm"]
    argv += ["--procs-per-node", "1", "--time", "00:10:00", "--signal-seconds", "60"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the tasks inherit it (sbatch exports ALL)
    assert main(argv) == 0
    out = capsys.readouterr().out
    job = re.search(r"submitted job array (\d+)", out).group(1)
    script = (d / "sweep" / "array.sbatch").read_text()
    assert f"#SBATCH --array=0-{N_PROXIES - 1}" in script
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@60" in script

    sweep = load_sweep(d / "sweep")
    tasks = []
    for k in range(N_PROXIES):
        info = slurm_env.wait_job(f"{job}_{k}", timeout=240)
        log = (d / "sweep" / "logs" / f"task-{k}-{job}.out").read_text()
        assert info["JobState"] == "COMPLETED", log
        assert info["ArrayJobId"] == job and info["ArrayTaskId"] == str(k)
        tasks.append(info["JobId"])
        assert f"run_dir={sweep['proxies'][k]['run_dir']}" in log  # the task ran its own proxy
        assert set(final_eval(sweep["proxies"][k]["run_dir"])) == {"val"}
    assert len(set(tasks)) == N_PROXIES  # one job per array task

    # proxy 1 trained by the array == its config trained here (one process, one thread each)
    p = sweep["proxies"][1]
    over = [o for o in p["overrides"] if not o.startswith("run_dir=")]
    here = d / "here"
    train(compose_config([*over, f"run_dir={here}"]), log=lambda *_: None)
    on_cluster = {r["step"]: r["loss"] for r in read_metrics(p["run_dir"]) if "loss" in r}
    in_process = {r["step"]: r["loss"] for r in read_metrics(here) if "loss" in r}
    assert on_cluster == in_process  # same code, data order and thread count: bitwise
    assert final_eval(here) == final_eval(p["run_dir"])
