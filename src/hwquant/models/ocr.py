"""A BiLSTM + CTC text-line recognizer (FINN-L's OCR network) and its metrics.

The image columns are the time steps: a [N, 32, W] line is read as W steps of 32
pixels by one bidirectional ``nn.LSTM`` (128 units per direction), whose outputs a
``nn.Linear`` maps to the characters plus the CTC blank (index 0). The model returns
log-probabilities for ``nn.CTCLoss``; :func:`greedy_decode` reads the best path.
Plain ``nn.LSTM`` / ``nn.Linear`` on purpose: ``hwquant.quantize`` swaps them for
``QuantLSTM`` / ``QuantLinear``.

>>> import torch
>>> model = TextLineBiLSTM(n_classes=36)
>>> log_probs = model(torch.zeros(2, 32, 40), lengths=torch.tensor([40, 25]))
>>> tuple(log_probs.shape)
(2, 40, 37)
>>> greedy_decode(log_probs, torch.tensor([40, 25]))[1] == greedy_decode(log_probs[1:, :25])[0]
True
>>> character_error_rate(["HELLO", "AB"], ["HALLO", "ABC"])
0.25
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hwquant.models.registry import record_architecture, register_model

__all__ = ["TextLineBiLSTM", "character_error_rate", "edit_distance", "greedy_decode"]


class TextLineBiLSTM(nn.Module):
    """BiLSTM(height → hidden per direction, ``num_layers``) → Linear(2·hidden →
    n_classes + 1) → log-softmax, over the columns of [N, height, W] (or
    [N, 1, height, W]) images in [0, 1].

    The pixels are centred to [-1, 1] first (2x − 1) so that a signed input quantizer
    spends its codes on both background and ink. ``forward(x, lengths)`` returns
    [N, W, n_classes + 1] log-probabilities (blank = 0); with ``lengths`` (each line's
    width) the LSTM runs on packed sequences, so the backward direction starts at
    each line's own end, and the steps past a line's end are zeros.
    """

    def __init__(
        self, n_classes: int = 36, height: int = 32, hidden: int = 128, num_layers: int = 1
    ) -> None:
        super().__init__()
        for name, v in (("n_classes", n_classes), ("height", height), ("hidden", hidden)):
            if v < 1:
                raise ValueError(f"TextLineBiLSTM: {name} must be ≥ 1, got {v}")
        if num_layers < 1:
            raise ValueError(f"TextLineBiLSTM: num_layers must be ≥ 1, got {num_layers}")
        self.height = height
        self.lstm = nn.LSTM(height, hidden, num_layers=num_layers, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, n_classes + 1)
        if type(self) is TextLineBiLSTM:
            record_architecture(
                self,
                "TextLineBiLSTM",
                n_classes=n_classes,
                height=height,
                hidden=hidden,
                num_layers=num_layers,
            )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.squeeze(1)
        if x.dim() != 3 or x.shape[1] != self.height:
            raise ValueError(
                f"TextLineBiLSTM expects images [N, {self.height}, W] or "
                f"[N, 1, {self.height}, W], got {tuple(x.shape)}"
            )
        seq = (2.0 * x - 1.0).permute(2, 0, 1)  # [W, N, height]: columns are time steps
        if lengths is None:
            h, _ = self.lstm(seq)  # [W, N, 2·hidden]
        else:
            lengths = _check_lengths(lengths, x.shape[0], x.shape[2])
            packed = pack_padded_sequence(seq, lengths.cpu(), enforce_sorted=False)
            out, _ = self.lstm(packed)
            h, _ = pad_packed_sequence(out, total_length=x.shape[2])
        return self.classifier(h.transpose(0, 1)).log_softmax(-1)  # [N, W, C + 1]


def _check_lengths(lengths: Tensor, n: int, w: int) -> Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},), got {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > w:
        raise ValueError(f"lengths must lie in 1..{w} (the image width), got {lengths.tolist()}")
    return lengths


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
    """Best-path CTC decoding: the arg-max class per step, repeats collapsed, blanks
    (0) dropped; one label list per sequence of ``log_probs`` [N, T, C] (steps past
    ``lengths[i]`` ignored).

    >>> lp = torch.log(torch.tensor([[[.1, .9, 0], [.1, .9, 0], [.8, .1, .1],
    ...                               [.1, .9, 0], [0, .2, .8]]]))
    >>> greedy_decode(lp)
    [[1, 1, 2]]
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [N, T, C], got {tuple(log_probs.shape)}")
    best = log_probs.argmax(-1).cpu()  # [N, T]
    T = best.shape[1]
    ends = [T] * best.shape[0] if lengths is None else _check_lengths(lengths, len(best), T)
    out = []
    for row, end in zip(best.tolist(), [int(e) for e in ends], strict=True):
        labels, prev = [], 0
        for k in row[:end]:
            if k != prev and k != 0:
                labels.append(k)
            prev = k
        out.append(labels)
    return out


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that
    turn ``a`` into ``b``.

    >>> edit_distance("KITTEN", "SITTING")
    3
    """
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def character_error_rate(predictions: Sequence[Sequence], references: Sequence[Sequence]) -> float:
    """Σ edit_distance(prediction, reference) / Σ len(reference) over the set (strings
    or label sequences); can exceed 1 when predictions insert many characters."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: give one each"
        )
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references are empty: the character error rate is undefined")
    errors = sum(edit_distance(p, r) for p, r in zip(predictions, references, strict=True))
    return errors / total


register_model("TextLineBiLSTM", TextLineBiLSTM)
