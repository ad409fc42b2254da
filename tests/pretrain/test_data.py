"""The data loader against megatron-core's own reader, the raw .npy bytes, and itself."""

import warnings

import numpy as np
import pytest

from configcore import ConfigError
from pretrain.config import compose_config
from pretrain.data.loader import DataLoader, DataOrder, block_quotas, build_data_order
from pretrain.data.sources import MegatronSource, NpySource
from tests.pretrain.helpers import EOS, documents, tiny_overrides, write_megatron, write_npy


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    docs = documents(30, max_bytes=800)
    return {
        "docs": docs,
        "meg": write_megatron(str(d / "meg/en"), docs, per_shard=11),
        "meg_noeos": write_megatron(str(d / "noeos/en"), docs, add_eos=False),
        "npy": write_npy(str(d / "npy/en.npy"), docs),
        "other": write_megatron(str(d / "other/de"), documents(20, start=100, max_bytes=600)),
        "dir": d,
    }


def expected_stream(docs):
    return np.concatenate([np.append(d, EOS) for d in docs]).astype(np.int64)


def test_megatron_stream_equals_megatron_core_reader(shards):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    src = MegatronSource(str(shards["dir"] / "meg/en-*"), EOS)
    # megatron-core hands out views of its mmap: keep each dataset alive while reading it
    datasets = [IndexedDataset(p) for p in shards["meg"]]
    ref = np.concatenate(
        [np.array(ds[i], dtype=np.int64) for ds in datasets for i in range(len(ds))]
    )
    tokens, docs, offs = src.read_stream(0, src.n_tokens)
    assert src.n_docs == 30 and len(shards["meg"]) == 3
    np.testing.assert_array_equal(tokens, ref)
    np.testing.assert_array_equal(tokens, expected_stream(shards["docs"]))
    # provenance: document 7 starts where the first 7 documents (+ their EOS) end
    start = sum(len(d) + 1 for d in shards["docs"][:7])
    assert docs[start] == 7 and offs[start] == 0 and docs[start - 1] == 6
    loc = src.locate(12)
    assert loc.file.endswith("en-0001") and loc.index == 1


def test_eos_inserted_between_documents_that_lack_it(shards):
    src = MegatronSource(shards["meg_noeos"][0], EOS)
    assert src.add_eos.sum() == 30
    np.testing.assert_array_equal(
        src.read_stream(0, src.n_tokens)[0], expected_stream(shards["docs"])
    )


def test_npy_and_megatron_give_the_same_samples(shards):
    meg = MegatronSource(str(shards["dir"] / "meg"), EOS)
    npy = NpySource(shards["npy"], EOS, "uint16")
    assert npy.n_docs == meg.n_docs and npy.n_tokens == meg.n_tokens
    a = DataOrder([meg], [], 32, seed=3)
    b = DataOrder([npy], [], 32, seed=3)
    for k in (0, 5, 77):
        np.testing.assert_array_equal(a.sample(k).tokens, b.sample(k).tokens)
        np.testing.assert_array_equal(a.sample(k).docs, b.sample(k).docs)


def test_samples_are_seq_len_plus_one_windows_covering_each_epoch_once(shards):
    src = MegatronSource(str(shards["dir"] / "meg"), EOS)
    order = DataOrder([src], [], 32, seed=0)
    n = order.per_epoch[0]
    assert n == (src.n_tokens - 1) // 32
    stream = expected_stream(shards["docs"])
    seen = set()
    for k in range(n):
        s = order.sample(k)
        assert len(s.tokens) == 33
        start = order.locate(k)[2] * 32
        np.testing.assert_array_equal(s.tokens, stream[start : start + 33])
        seen.add(start)
    assert len(seen) == n  # a permutation: every window once per epoch
    # the next epoch is a different permutation of the same windows
    e1 = [order.locate(k)[2] for k in range(n, 2 * n)]
    assert sorted(e1) == list(range(n)) and e1 != [order.locate(k)[2] for k in range(n)]


def test_order_is_a_function_of_the_seed(shards):
    src = MegatronSource(str(shards["dir"] / "meg"), EOS)
    a = [DataOrder([src], [], 32, seed=1).locate(k) for k in range(20)]
    b = [DataOrder([src], [], 32, seed=1).locate(k) for k in range(20)]
    c = [DataOrder([src], [], 32, seed=2).locate(k) for k in range(20)]
    assert a == b and a != c


def test_mixture_weights_are_exact_within_each_block(shards):
    en = MegatronSource(str(shards["dir"] / "meg"), EOS)
    de = MegatronSource(shards["other"][0], EOS)
    order = DataOrder([en, de], [0.7, 0.3], 16, seed=0, mix_block=100)
    assert block_quotas([0.7, 0.3], 100).tolist() == [70, 30]
    for b in range(3):
        srcs = [order.locate(k)[0] for k in range(b * 100, (b + 1) * 100)]
        assert srcs.count(0) == 70 and srcs.count(1) == 30
    # each source's samples are consumed in order 0,1,2,... of its own stream: no repeats
    firsts = [order.locate(k) for k in range(300) if order.locate(k)[0] == 1]
    assert len({(e, p) for _, e, p in firsts}) == len(firsts)
    with pytest.raises(ConfigError, match="gets 0 of every"):
        DataOrder([en, de], [1000, 1], 16, seed=0, mix_block=100)


def test_dp_slices_reassemble_the_same_global_batches(shards):
    src = MegatronSource(str(shards["dir"] / "meg"), EOS)
    order = DataOrder([src], [], 32, seed=0)
    single = DataLoader(order, 8, 0, 1)
    ranks = {dp: [DataLoader(order, 8, r, dp) for r in range(dp)] for dp in (2, 4)}
    for _ in range(3):
        ref, rng = single.next_batch()
        for _dp, loaders in ranks.items():
            parts = [ld.next_batch() for ld in loaders]
            assert all(p[1] == rng for p in parts)
            np.testing.assert_array_equal(
                np.concatenate([p[0]["inputs"] for p in parts]), ref["inputs"]
            )


def test_resume_continues_from_the_exact_next_sample(shards):
    src = MegatronSource(str(shards["dir"] / "meg"), EOS)
    order = DataOrder([src], [], 32, seed=0)
    straight = DataLoader(order, 4, 0, 1)
    batches = [straight.next_batch()[0]["inputs"] for _ in range(5)]
    first = DataLoader(order, 4, 0, 1)
    for _ in range(2):
        first.next_batch()
    resumed = DataLoader(order, 4, 0, 1)
    resumed.load_state_dict(first.state_dict())
    for k in range(2, 5):
        np.testing.assert_array_equal(resumed.next_batch()[0]["inputs"], batches[k])


def test_labels_are_inputs_shifted_and_positions_restart_per_document(shards):
    src = MegatronSource(str(shards["dir"] / "meg"), EOS)
    loader = DataLoader(DataOrder([src], [], 64, seed=0), 4, 0, 1, reset_positions=True)
    b, _ = loader.next_batch()
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["labels"][:, :-1])
    docs, pos = b["document_ids"].numpy(), b["position_ids"].numpy()
    for r in range(4):
        for j in range(1, 64):
            assert pos[r, j] == (0 if docs[r, j] != docs[r, j - 1] else pos[r, j - 1] + 1)


def test_config_level_errors_name_the_fix(shards, tmp_path):
    run = compose_config(tiny_overrides(tmp_path, [str(tmp_path / "nothing")]))
    with pytest.raises(ConfigError, match="matches no .idx file"):
        build_data_order(run)
    run = compose_config(tiny_overrides(tmp_path, [shards["meg"][0]], **{"model.vocab_size": 100}))
    with pytest.raises(ConfigError, match="token id .* >= model.vocab_size=100"):
        build_data_order(run)
    run = compose_config(
        tiny_overrides(
            tmp_path, [shards["meg"][0]], **{"trainer.seq_len": 128, "model.max_seq_len": 4096}
        )
    )
    small = write_megatron(str(tmp_path / "tiny/x"), [np.arange(1, 20, dtype=np.uint16)])
    run.data.paths = small
    with pytest.raises(ConfigError, match="fewer than one sample"):
        build_data_order(run)
