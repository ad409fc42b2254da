"""No hidden stalls: under trainer.nan_check=log a training step between log steps reads nothing
back to the host (counted: every `.item()`, `.tolist()` and `.cpu()` call on a tensor, from one
step's end to the next, data loading and callbacks included), and the profiler writes its trace.

On a GPU each such read waits for all queued kernels: the host then cannot run ahead to launch
the next step's, and the device idles. A real training loop (Trainer, real text, packed documents
with the intra-document mask) on CPU; the calls are counted, not timed."""

import json

import pytest
import torch

from pretrain.callbacks import Callback
from pretrain.config import compose_config
from pretrain.train import Trainer
from tests.pretrain.helpers import documents, tiny_overrides, write_megatron

READS = ("item", "tolist", "cpu")


class ReadCounter(Callback):
    """Host reads per step: the calls counted from the end of the previous step to the end of
    this one (after the built-in callbacks, which run first)."""

    def __init__(self, calls: dict):
        self.calls, self.per_step, self.seen = calls, {}, 0

    def on_fit_start(self, state):  # setup (building, the initial weights) is not a step
        self.seen = sum(self.calls.values())

    def on_step_end(self, state):
        total = sum(self.calls.values())
        self.per_step[state.step] = total - self.seen
        self.seen = total


@pytest.fixture
def counted(monkeypatch):
    calls = dict.fromkeys(READS, 0)
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    return write_megatron(str(d / "train/man"), documents(30, max_bytes=1500))


def fit(run_dir, data, calls, **extra):
    ov = tiny_overrides(
        run_dir,
        data,
        steps=8,
        # fused AdamW, as optim.fused=auto picks on a GPU: the for-each AdamW reads its step
        # counters with .item() (CPU tensors there, so no stall on a GPU, but counted here)
        **{
            "trainer.log_interval": 4,
            "data.intra_doc_mask": "true",
            "optim.fused": "'true'",
            **extra,
        },
    )
    counter = ReadCounter(calls)
    out = Trainer(compose_config(ov), [counter], log=lambda *_: None).fit()
    return out, counter.per_step


def test_no_host_reads_between_log_steps(tmp_path, data, counted):
    out, per_step = fit(tmp_path / "log", data, counted, **{"trainer.nan_check": "log"})
    print("host reads per step (nan_check=log):", per_step)
    assert [s for s, n in per_step.items() if n and s % 4] == []  # steps 1-3, 5-7: none
    assert per_step[4] > 0 and per_step[8] > 0  # the log steps read loss and norm
    assert all(isinstance(v, float) for v in out["losses"].values())
    # the same run reading every step (the default) gets the same losses, bitwise
    counted.update(dict.fromkeys(READS, 0))
    ref, every = fit(tmp_path / "step", data, counted, **{"trainer.profile_steps": "[2,3]"})
    print("host reads per step (nan_check=step):", every)
    assert out["losses"] == ref["losses"]
    assert all(every[s] > 0 for s in (1, 2, 3))  # what the switch removes
    trace = json.loads((tmp_path / "step/profile/trace_rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "aten::mm" in names or "aten::addmm" in names
    table = (tmp_path / "step/profile/top_kernels_rank0.txt").read_text()
    assert "Self CPU" in table and len([r for r in table.splitlines() if "aten::" in r]) >= 10


def test_nan_check_config():
    from configcore import ConfigError

    with pytest.raises(ConfigError, match="nan_policy=skip needs trainer.nan_check=step"):
        compose_config(["trainer.nan_check=log", "trainer.nan_policy=skip"])
    with pytest.raises(
        ConfigError, match=r"trainer.profile_steps=\[3, 2\] must be \[first, last\]"
    ):
        compose_config(["trainer.profile_steps=[3,2]"])
