"""The BiLSTM + CTC text-line model: decoding, CER, shapes, and that it learns."""

import math

import pytest
import torch
import torch.nn.functional as F

from hwquant.datasets import text_lines
from hwquant.models import TextLineBiLSTM
from hwquant.models.ocr import character_error_rate, edit_distance, greedy_decode
from hwquant.models.registry import architecture_of, build_registered
from hwquant.training import evaluate_ctc, fit_ctc


def _one_hot_log_probs(paths, C=5):
    """[N, T, C] log-probabilities whose arg-max path is ``paths`` (lists of classes)."""
    T = max(len(p) for p in paths)
    x = torch.full((len(paths), T, C), -5.0)
    for i, p in enumerate(paths):
        for t, k in enumerate(p):
            x[i, t, k] = 0.0
    return x.log_softmax(-1)


@pytest.mark.parametrize(
    ("path", "labels"),
    [
        ([1, 1, 0, 1, 2, 2, 0], [1, 1, 2]),  # a blank separates the repeated 1
        ([0, 0, 0], []),
        ([3, 3, 3, 3], [3]),
        ([0, 4, 0, 4, 4, 0, 1], [4, 4, 1]),
        ([2, 1, 2, 1], [2, 1, 2, 1]),
    ],
)
def test_greedy_decode(path, labels):
    assert greedy_decode(_one_hot_log_probs([path])) == [labels]


def test_greedy_decode_stops_at_lengths():
    lp = _one_hot_log_probs([[1, 0, 2, 3], [1, 0, 2, 3]])
    assert greedy_decode(lp, torch.tensor([4, 2])) == [[1, 2, 3], [1]]
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.4"):
        greedy_decode(lp, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"log_probs must be \[N, T, C\]"):
        greedy_decode(lp[0])


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("ABC", "ABC", 0),
        ("ABC", "", 3),  # deletions
        ("", "AB", 2),  # insertions
        ("ABC", "AXC", 1),  # substitution
        ("ABCD", "ACD", 1),
        ("ACD", "ABCD", 1),
        ("KITTEN", "SITTING", 3),
        ("FLAW", "LAWN", 2),
        ([1, 2, 3], [3, 2, 1], 2),
    ],
)
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d and edit_distance(b, a) == d


def test_character_error_rate():
    # 1 substitution + 1 deletion + 2 insertions over 4 + 3 + 1 reference characters
    cer = character_error_rate(["ABXD", "AB", "QRS"], ["ABCD", "ABC", "Q"])
    assert cer == pytest.approx(4 / 8)
    assert character_error_rate(["A"], ["A"]) == 0.0
    assert character_error_rate(["ABCDEF"], ["A"]) == 5.0  # insertions can exceed 1
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        character_error_rate(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="references are empty"):
        character_error_rate([""], [""])


def test_forward_shapes_and_ctc_loss():
    model = TextLineBiLSTM(n_classes=36)
    x = torch.rand(3, 32, 48)
    lp = model(x)
    assert lp.shape == (3, 48, 37)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 48), atol=1e-5)
    assert torch.equal(model(x.unsqueeze(1)), lp)  # [N, 1, 32, W] is the same input
    lengths = torch.tensor([48, 30, 12])
    packed = model(x, lengths)
    assert torch.allclose(packed[0], lp[0], atol=1e-5)  # full length: as unpacked
    # a packed line is the line alone: what follows its length does not matter
    alone = model(x[1:2, :, :30])
    assert torch.allclose(packed[1, :30], alone[0], atol=1e-5)
    labels = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    loss = F.ctc_loss(lp.transpose(0, 1), labels, lengths, torch.tensor([3, 2, 1]))
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_layers_and_architecture():
    model = TextLineBiLSTM(n_classes=10, hidden=16, num_layers=2)
    assert isinstance(model.lstm, torch.nn.LSTM) and model.lstm.bidirectional
    assert model.lstm.input_size == 32 and model.classifier.in_features == 32
    arch = architecture_of(model)
    assert arch == {
        "name": "TextLineBiLSTM",
        "kwargs": {"n_classes": 10, "height": 32, "hidden": 16, "num_layers": 2},
    }
    rebuilt = build_registered(arch["name"], arch["kwargs"])
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 32, 20)
    assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: TextLineBiLSTM(n_classes=0), "n_classes must be ≥ 1"),
        (lambda: TextLineBiLSTM(num_layers=0), "num_layers must be ≥ 1"),
        (lambda: TextLineBiLSTM()(torch.zeros(2, 28, 10)), r"expects images \[N, 32, W\]"),
        (lambda: TextLineBiLSTM()(torch.zeros(2, 32, 10), torch.tensor([3])), "shape"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fit_ctc_lowers_the_loss():
    torch.manual_seed(0)
    d = text_lines(400, 50, seed=1, length=(2, 4))
    model = TextLineBiLSTM(d.n_classes, hidden=32)
    r = fit_ctc(model, d.train.loader(16, shuffle=True), d.test.loader(50), epochs=3,
                lr=3e-3, progress=False)  # fmt: skip
    assert len(r.history) == 3 and all(math.isfinite(h["loss"]) for h in r.history)
    assert r.history[-1]["loss"] < 0.8 * r.history[0]["loss"], r.history


@pytest.mark.slow
def test_fit_ctc_learns_to_read():
    """≈ 1.5 min: 4000 lines, 12 epochs (CTC sits on its all-blank plateau for the
    first ~700 steps, so no seconds-long run gets past it)."""
    torch.manual_seed(0)
    d = text_lines(4000, 500, seed=0)
    model = TextLineBiLSTM(d.n_classes)
    test = d.test.loader(128)
    untrained = evaluate_ctc(model, test)
    r = fit_ctc(model, d.train.loader(32, shuffle=True), test, epochs=12, clip_norm=5.0,
                progress=False)  # fmt: skip
    assert untrained >= 0.9 and r.test_cer < 0.2, r.history


def test_fit_ctc_errors():
    d = text_lines(n_train=4, n_test=2)
    model = TextLineBiLSTM(hidden=4)
    with pytest.raises(ValueError, match="epochs must be ≥ 1"):
        fit_ctc(model, d.train.loader(), d.test.loader(), epochs=0)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        fit_ctc(model, d.train.loader(), d.test.loader(), clip_norm=0.0)
