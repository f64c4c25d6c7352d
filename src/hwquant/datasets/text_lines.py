"""Synthetic text lines for OCR (FINN-L's BiLSTM + CTC task), rendered with Pillow.

Each line is a random string of digits and upper-case letters drawn with Pillow's
bundled FreeType font (Aileron, ``PIL.ImageFont.load_default(size=...)``) at a random
size, with random spacing between the characters, a random vertical offset, a slight
rotation, a Gaussian blur and additive Gaussian noise, on a dark background with bright
ink (ink = 1, so zero padding on the right is "no ink"). The lines are 32 pixels high
and as wide as their text; a split stacks them zero-padded to its widest line (a
multiple of 8) and keeps each line's own width for ``pack_padded_sequence`` and the CTC
input lengths.

Everything is drawn from NumPy ``Generator`` streams seeded by ``seed`` (one child
stream per split, so the test set does not change with ``n_train``) and rendered by
Pillow into 8-bit images; the float tensors are those bytes divided by 255. The same
seed and the same NumPy / Pillow / FreeType give the same bytes on every machine.

Labels follow the CTC convention: index 0 is the blank, character ``k`` of
:data:`ALPHABET` is label ``k + 1``.

>>> d = text_lines(n_train=8, n_test=4, seed=0)
>>> tuple(d.train.images.shape[:2]), d.train.images.dtype, len(d.test)
((8, 32), torch.float32, 4)
>>> d.decode(d.train.labels[0, : d.train.label_lengths[0]]) == d.train.texts[0]
True
>>> d.encode("A0"), d.n_classes
([11, 1], 36)
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

__all__ = ["ALPHABET", "HEIGHT", "TextLineSet", "TextLines", "text_lines"]

#: The characters of the lines (CTC label k + 1 is ALPHABET[k]; 0 is the blank).
ALPHABET = string.digits + string.ascii_uppercase
#: The height of every line image in pixels.
HEIGHT = 32
_PAD_MULTIPLE = 8


@dataclass(frozen=True)
class TextLineSet:
    """One split: ``images`` [N, 32, W] float32 in [0, 1] (zero-padded on the right),
    ``widths`` [N] (each line's own width), ``labels`` [N, L_max] int64 (1-based
    character indices, 0-padded), ``label_lengths`` [N] and the ``texts``."""

    images: Tensor
    widths: Tensor
    labels: Tensor
    label_lengths: Tensor
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def loader(
        self, batch_size: int = 32, shuffle: bool = False, seed: int = 0, by_width: bool = True
    ) -> DataLoader:
        """Batches of (images, widths, labels, label_lengths).

        ``by_width`` groups lines of similar width into a batch (sorted by width, ties
        and, with ``shuffle``, the order of the batches drawn at random), so that a
        batch cropped to its widest line (``images[..., : widths.max()]``) carries
        little padding: the recurrence runs over fewer columns. ``shuffle`` draws from
        a generator seeded by ``seed`` (a new order every epoch, the same sequence of
        orders every run).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        ds = TensorDataset(self.images, self.widths, self.labels, self.label_lengths)
        g = torch.Generator().manual_seed(seed)
        if by_width:
            return DataLoader(ds, batch_sampler=_WidthBatches(self.widths, batch_size, shuffle, g))
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


class _WidthBatches(Sampler[list[int]]):
    """Batches of indices of lines with similar widths (:meth:`TextLineSet.loader`)."""

    def __init__(self, widths: Tensor, batch_size: int, shuffle: bool, g: torch.Generator):
        self.widths, self.batch_size, self.shuffle, self.g = widths, batch_size, shuffle, g

    def __len__(self) -> int:
        return -(-len(self.widths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.widths)
        perm = torch.randperm(n, generator=self.g) if self.shuffle else torch.arange(n)
        order = perm[torch.argsort(self.widths[perm], stable=True)]  # random ties
        batches = list(order.split(self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.g)]
        yield from (b.tolist() for b in batches)


@dataclass(frozen=True)
class TextLines:
    """The train and test splits and the ``alphabet`` (CTC blank = 0)."""

    train: TextLineSet
    test: TextLineSet
    alphabet: str = ALPHABET
    height: int = HEIGHT

    @property
    def n_classes(self) -> int:
        """Number of characters (the CTC output has one more: the blank)."""
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """Label indices (1-based) of ``text``; ValueError naming an unknown character."""
        return encode(text, self.alphabet)

    def decode(self, labels: Iterable[int] | Tensor) -> str:
        """The string of 1-based label indices (blanks, 0, are skipped)."""
        return decode(labels, self.alphabet)


def encode(text: str, alphabet: str = ALPHABET) -> list[int]:
    """1-based label indices of ``text`` in ``alphabet``.

    >>> encode("Z9")
    [36, 10]
    """
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    bad = sorted({c for c in text if c not in index})
    if bad:
        raise ValueError(f"characters {bad} are not in the alphabet {alphabet!r}")
    return [index[c] for c in text]


def decode(labels: Iterable[int] | Tensor, alphabet: str = ALPHABET) -> str:
    """The string of 1-based ``labels`` (0, the blank, is skipped).

    >>> decode([36, 0, 10])
    'Z9'
    """
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    out = []
    for v in values:
        if not 0 <= int(v) <= len(alphabet):
            raise ValueError(f"label {v} is outside 0..{len(alphabet)} (0 = blank)")
        if v:
            out.append(alphabet[int(v) - 1])
    return "".join(out)


@dataclass(frozen=True)
class _Style:
    """The random rendering choices (ranges are inclusive)."""

    length: tuple[int, int]
    font_size: tuple[int, int]
    spacing: tuple[int, int]
    rotation: float
    blur: float
    noise: float


def text_lines(
    n_train: int = 4000,
    n_test: int = 500,
    seed: int = 0,
    *,
    length: tuple[int, int] = (3, 8),
    font_size: tuple[int, int] = (16, 20),
    spacing: tuple[int, int] = (-1, 3),
    rotation: float = 3.0,
    blur: float = 0.8,
    noise: float = 12.0,
) -> TextLines:
    """Render ``n_train`` + ``n_test`` random text lines (module docstring).

    Args:
        n_train, n_test: lines per split (≥ 1).
        seed: seeds everything (each split has its own child stream).
        length: (min, max) characters per line, 1 ≤ min ≤ max ≤ 32.
        font_size: (min, max) font size in pixels, within 8..24 (fits the 32-pixel height).
        spacing: (min, max) extra pixels between neighbouring characters, within -3..12.
        rotation: maximal rotation in degrees (uniform in ±rotation), 0..10.
        blur: maximal Gaussian blur radius in pixels (uniform in [0, blur]), 0..3.
        noise: maximal standard deviation of the Gaussian noise in 8-bit grey levels
            (uniform in [0, noise] per line), 0..64.

    Returns:
        :class:`TextLines` with ``train`` and ``test`` :class:`TextLineSet` s.
    """
    style = _Style(
        _check_range("length", length, 1, 32),
        _check_range("font_size", font_size, 8, 24),
        _check_range("spacing", spacing, -3, 12),
        _check_bound("rotation", rotation, 10.0),
        _check_bound("blur", blur, 3.0),
        _check_bound("noise", noise, 64.0),
    )
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    return TextLines(
        _render_set(n_train, np.random.default_rng(train_seq), style),
        _render_set(n_test, np.random.default_rng(test_seq), style),
    )


def _check_range(name: str, value: Sequence[int], lo: int, hi: int) -> tuple[int, int]:
    ok = (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(
            f"{name} must be (min, max) integers with {lo} ≤ min ≤ max ≤ {hi}, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _check_bound(name: str, value: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi:
        raise ValueError(f"{name} must be a number in [0, {hi:g}], got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=32)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _render_set(n: int, rng: np.random.Generator, style: _Style) -> TextLineSet:
    lines = [_render_line(rng, style) for _ in range(n)]
    texts = tuple(t for t, _ in lines)
    widths = [a.shape[1] for _, a in lines]
    W = -(-max(widths) // _PAD_MULTIPLE) * _PAD_MULTIPLE
    pixels = np.zeros((n, HEIGHT, W), dtype=np.uint8)
    for i, (_, a) in enumerate(lines):
        pixels[i, :, : a.shape[1]] = a
    L = max(len(t) for t in texts)
    labels = np.zeros((n, L), dtype=np.int64)
    for i, t in enumerate(texts):
        labels[i, : len(t)] = encode(t)
    return TextLineSet(
        images=torch.from_numpy(pixels).float() / 255.0,
        widths=torch.tensor(widths, dtype=torch.int64),
        labels=torch.from_numpy(labels),
        label_lengths=torch.tensor([len(t) for t in texts], dtype=torch.int64),
        texts=texts,
    )


def _render_line(rng: np.random.Generator, s: _Style) -> tuple[str, np.ndarray]:
    """(text, uint8 image [32, width]) of one random line."""
    from PIL import Image, ImageDraw, ImageFilter

    n = int(rng.integers(s.length[0], s.length[1] + 1))
    text = "".join(ALPHABET[int(k)] for k in rng.integers(0, len(ALPHABET), n))
    font = _font(int(rng.integers(s.font_size[0], s.font_size[1] + 1)))
    gaps = rng.integers(s.spacing[0], s.spacing[1] + 1, n)
    background = int(rng.integers(0, 41))
    ink = int(rng.integers(180, 256))
    margin = int(rng.integers(2, 7))
    # advances are FreeType 26.6 fixed point: exact in binary, rounded to whole pixels
    advances = [round(font.getlength(c)) for c in text]
    width = 2 * margin + sum(advances) + int(gaps[1:].sum())
    ascent, descent = font.getmetrics()
    top = (HEIGHT - ascent - descent) // 2 + int(rng.integers(-2, 3))
    img = Image.new("L", (width, HEIGHT), background)
    draw = ImageDraw.Draw(img)
    x = margin
    for i, (c, adv) in enumerate(zip(text, advances, strict=True)):
        x += int(gaps[i]) if i else 0
        draw.text((x, top), c, fill=ink, font=font)
        x += adv
    angle = float(rng.uniform(-s.rotation, s.rotation))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=background)
    radius = float(rng.uniform(0.0, s.blur))
    if radius > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    sigma = float(rng.uniform(0.0, s.noise))
    a = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 1.0, (HEIGHT, width)) * sigma
    return text, np.clip(np.rint(a), 0, 255).astype(np.uint8)
