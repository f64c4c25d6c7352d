"""The synthetic text-line dataset: deterministic, consistent, validated."""

import hashlib

import numpy as np
import pytest
import torch

from hwquant.datasets import ALPHABET, text_lines
from hwquant.datasets.text_lines import HEIGHT, decode, encode


@pytest.fixture(scope="module")
def data():
    return text_lines(n_train=64, n_test=16, seed=3)


def _digest(s):
    return hashlib.sha256((s.images * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()


def test_same_seed_same_bytes(data):
    again = text_lines(n_train=64, n_test=16, seed=3)
    for a, b in ((data.train, again.train), (data.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.widths, b.widths)
        assert torch.equal(a.labels, b.labels) and a.texts == b.texts


def test_images_are_bytes_over_255(data):
    # the float images are exactly the rendered 8-bit pixels / 255: no float drift
    x = data.train.images
    assert torch.equal((x * 255).round() / 255, x)
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1


def test_different_seeds_differ(data):
    other = text_lines(n_train=64, n_test=16, seed=4)
    assert other.train.texts != data.train.texts
    assert _digest(other.test) != _digest(data.test)


def test_test_split_does_not_depend_on_n_train(data):
    more = text_lines(n_train=80, n_test=16, seed=3)
    assert more.test.texts == data.test.texts
    assert torch.equal(more.test.images, data.test.images)
    assert more.train.texts[:64] == data.train.texts  # the train stream is a prefix


def test_shapes_and_lengths(data):
    s = data.train
    n, h, W = s.images.shape
    assert (n, h) == (64, HEIGHT) and W % 8 == 0 and -(-int(s.widths.max()) // 8) * 8 == W
    assert s.labels.shape == (n, int(s.label_lengths.max()))
    for i in range(n):
        w = int(s.widths[i])
        assert float(s.images[i, :, w:].abs().sum()) == 0.0  # zero padding after the line
        assert float(s.images[i, :, :w].max()) > 0.5  # bright ink inside it
        L = int(s.label_lengths[i])
        assert 3 <= L <= 8 and len(s.texts[i]) == L
        assert bool((s.labels[i, :L] >= 1).all()) and bool((s.labels[i, L:] == 0).all())


def test_labels_decode_to_alphabet_strings(data):
    s = data.test
    for y, L, t in zip(s.labels, s.label_lengths, s.texts, strict=True):
        assert data.decode(y[:L]) == t and set(t) <= set(ALPHABET)
        assert data.encode(t) == y[:L].tolist()
    assert data.n_classes == len(ALPHABET) == 36 and data.alphabet == ALPHABET


def test_options_change_the_lines():
    long = text_lines(n_train=20, n_test=1, length=(10, 12), spacing=(4, 6))
    short = text_lines(n_train=20, n_test=1, length=(2, 2), spacing=(0, 0))
    assert all(10 <= len(t) <= 12 for t in long.train.texts)
    assert all(len(t) == 2 for t in short.train.texts)
    assert int(long.train.widths.min()) > int(short.train.widths.max())
    clean = text_lines(n_train=8, n_test=1, rotation=0.0, blur=0.0, noise=0.0)
    # no noise and no blur: few grey levels (background, ink, antialiased edges)
    assert len(np.unique(clean.train.images[0].numpy())) < 200


def test_width_loader_batches_similar_widths(data):
    loader = data.train.loader(batch_size=16, shuffle=True, seed=1)
    batches = list(loader)
    assert len(batches) == 4 and sum(len(b[0]) for b in batches) == 64
    seen = torch.cat([b[1] for b in batches]).sort().values
    assert torch.equal(seen, data.train.widths.sort().values)
    spans = [int(b[1].max() - b[1].min()) for b in batches]
    assert max(spans) < int(data.train.widths.max() - data.train.widths.min())
    order = [b[1].tolist() for b in data.train.loader(16, shuffle=True, seed=1)]
    assert order == [b[1].tolist() for b in batches]  # seeded: the same batches again
    plain = next(iter(data.train.loader(8, by_width=False)))
    assert torch.equal(plain[0], data.train.images[:8])


def test_encode_decode_errors():
    assert decode(encode("AZ09")) == "AZ09"
    with pytest.raises(ValueError, match=r"\['a'\] are not in the alphabet"):
        encode("aB")
    with pytest.raises(ValueError, match=r"label 37 is outside 0\.\.36"):
        decode([1, 37])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0}, "n_train must be an integer ≥ 1"),
        ({"n_test": 2.5}, "n_test must be an integer ≥ 1"),
        ({"seed": -1}, "seed must be an integer ≥ 0"),
        ({"length": (5, 3)}, "length must be"),
        ({"length": (0, 3)}, "length must be"),
        ({"font_size": (16, 40)}, r"font_size must be .* 8 ≤ min ≤ max ≤ 24"),
        ({"spacing": (1,)}, "spacing must be"),
        ({"rotation": 45}, r"rotation must be a number in \[0, 10\]"),
        ({"blur": -1.0}, "blur must be"),
        ({"noise": "high"}, "noise must be"),
    ],
)
def test_argument_errors(kwargs, match):
    args = {"n_train": 2, "n_test": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        text_lines(**args)


def test_loader_batch_size_error(data):
    with pytest.raises(ValueError, match="batch_size must be an integer ≥ 1"):
        data.train.loader(0)


def test_pinned_bytes():
    """The generator's output is pinned: a change to the rendering (or to the pinned
    NumPy / Pillow / FreeType) shows here, not as a silent shift in every OCR result."""
    import PIL
    from PIL import features

    d = text_lines(n_train=16, n_test=4, seed=0)
    h = hashlib.sha256()
    for s in (d.train, d.test):
        h.update((s.images * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(" ".join(s.texts).encode())
    versions = f"NumPy {np.__version__}, Pillow {PIL.__version__}, FreeType {features.version('freetype2')}"
    assert h.hexdigest() == PINNED, f"text_lines(16, 4, seed=0) changed ({versions})"


# text_lines(16, 4, seed=0) with NumPy 2.4.6, Pillow 13.0.0, FreeType 2.14.3
PINNED = "72a087a0cdb9d4b91c7a6f223c9ea580684be5fe3ea2a56b1b4bd1c394684d76"
