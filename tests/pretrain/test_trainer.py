"""The Trainer's callback protocol (pretrain/callbacks.py): which events a callback sees, in which
order, with what state (a TrainState, never the Trainer); and that a callback's stop request ends
the run with a full checkpoint."""

import pytest

from pretrain.callbacks import Callback, TrainState
from pretrain.checkpoint import read_index
from pretrain.config import compose_config
from pretrain.train import Trainer
from tests.pretrain.helpers import documents, read_metrics, tiny_overrides, write_megatron


class Recorder(Callback):
    def __init__(self):
        self.events = []
        self.states = set()  # the type of every hook's first argument

    def on_fit_start(self, state):
        self.states.add(type(state))
        self.events.append(("fit_start", state.step))

    def on_batch(self, state, batch, sample_range):
        self.events.append(("batch", state.step + 1, tuple(sample_range)))

    def on_step_end(self, state):
        self.states.add(type(state))
        self.events.append(("step_end", state.step, state.out.loss))

    def on_eval(self, state, results):
        self.events.append(("eval", state.step, sorted(results)))

    def on_checkpoint(self, state, kind, step):
        self.events.append(("checkpoint", kind, step))

    def on_stop(self, state):
        self.states.add(type(state))
        self.events.append(("stop", state.step, state.stop_reason))

    def close(self, state):
        self.events.append(("close",))


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.request_stop("asked by a callback")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    return {
        "train": write_megatron(str(d / "train/man"), documents(30, max_bytes=1500)),
        "val": write_megatron(str(d / "val/man"), documents(8, start=120, max_bytes=1500)),
    }


def test_events_in_order_with_the_state_of_each_step(tmp_path, data):
    ov = tiny_overrides(
        tmp_path / "r",
        data["train"],
        steps=4,
        **{
            "checkpoint.series": "'steps:[0,2]'",
            "checkpoint.interval": 2,
            "checkpoint.keep_last": 0,
            "eval.paths": f"[{data['val'][0]}]",
            "eval.names": "[val]",
            "eval.max_tokens": 128,
            "eval.at_series": "false",
            "eval.interval": 3,
        },
    )
    rec = Recorder()
    out = Trainer(compose_config(ov), [rec], log=lambda *_: None).fit()
    ev = rec.events
    # the user's callback comes after the built-in ones: at a step it sees their work done
    assert ev[0] == ("checkpoint", "weights", 0) and ev[1] == ("fit_start", 0)
    steps = [e for e in ev if e[0] == "step_end"]
    assert [e[1] for e in steps] == [1, 2, 3, 4] and [e[2] for e in steps] == [
        out["losses"][s] for s in (1, 2, 3, 4)
    ]
    assert [e[2] for e in ev if e[0] == "batch"] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    step2 = ev[ev.index(steps[0]) + 1 : ev.index(steps[1]) + 1]
    assert step2 == [
        ("batch", 2, (8, 16)),
        ("checkpoint", "weights", 2),
        ("checkpoint", "full", 2),
        steps[1],
    ]
    # eval.interval=3 and the last step (at_series off: not at 0 or 2)
    assert [e[1:] for e in ev if e[0] == "eval"] == [(3, ["val"]), (4, ["val"])]
    assert ev[-2:] == [("stop", 4, None), ("close",)]
    assert rec.states == {TrainState}
    saved = [(e[1], e[2]) for e in ev if e[0] == "checkpoint"]
    assert sorted(saved, key=lambda x: (x[1], x[0])) == [
        (e["kind"], e["step"]) for e in read_index(tmp_path / "r")
    ]


def test_a_callback_can_stop_the_run_with_a_full_checkpoint(tmp_path, data):
    ov = tiny_overrides(tmp_path / "s", data["train"], steps=6, **{"checkpoint.interval": 0})
    rec = Recorder()
    out = Trainer(compose_config(ov), [StopAt(2), rec], log=lambda *_: None).fit()
    assert out["step"] == 2 and sorted(out["losses"]) == [1, 2]
    assert [(e["kind"], e["step"]) for e in read_index(tmp_path / "s")] == [("full", 2)]
    assert rec.events[-3:] == [
        ("checkpoint", "full", 2),
        ("stop", 2, "asked by a callback"),
        ("close",),
    ]
    assert [m["step"] for m in read_metrics(tmp_path / "s")] == [1, 2]
