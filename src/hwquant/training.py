"""A small, fast training loop for QAT (and float baselines) on in-memory data.

>>> from hwquant.datasets import digits
>>> from hwquant.models import MLP
>>> d = digits(flat=True)
>>> result = fit(MLP((64, 32, 10)), d.train, d.test, epochs=1, progress=False)
>>> 0.0 <= result.test_accuracy <= 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

__all__ = [
    "CTCFitResult",
    "FitResult",
    "evaluate",
    "evaluate_ctc",
    "fit",
    "fit_ctc",
    "steady_malloc",
]

#: glibc malloc settings of :func:`steady_malloc`: (mallopt code, environment name, value)
_MALLOC_SETTINGS = (
    (-3, "MALLOC_MMAP_THRESHOLD_", 32 << 20),  # M_MMAP_THRESHOLD: heap, not mmap, below it
    (-1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1),  # M_TRIM_THRESHOLD: never trim the heap
)


def steady_malloc() -> bool:
    """Keep freed memory in this process instead of handing it back to the kernel
    (glibc's malloc: no heap trimming, no mmap for blocks under 32 MiB), so training
    steps do not page-fault their buffers back in: by default a small CNN's step
    spends 2–3 ms of 8 in page faults (``benchmarks/peers.py``), and ``hwquant demo``
    runs 14 % faster without them. Process-wide, and the process keeps its peak heap:
    the ``hwquant`` command calls it; scripts may. Child processes (sweep workers)
    inherit it through ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``. Where
    either is already set (the user's own choice) nothing changes. Returns whether it
    took effect (False on other C libraries).

    >>> from hwquant.training import steady_malloc
    >>> steady_malloc()  # at the top of a training script  # doctest: +SKIP
    True
    """
    import ctypes
    import os

    if any(name in os.environ for _, name, _ in _MALLOC_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    if not all(mallopt(code, value) for code, _, value in _MALLOC_SETTINGS):
        return False
    for _, name, value in _MALLOC_SETTINGS:
        os.environ[name] = str(value)
    return True


@dataclass
class FitResult:
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"test_accuracy": self.test_accuracy, "history": self.history}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    device = next(model.parameters()).device
    for x, y in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


class _BufferGuard:
    """The float buffers (BN statistics, quantizer scales) as they were before a step's
    forward, so a step whose loss is not finite can undo what its forward wrote."""

    def __init__(self, model: nn.Module) -> None:
        self.bufs = [b for b in model.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.bufs]

    def save(self) -> None:
        if self.bufs:
            torch._foreach_copy_(self.saved, [b.detach() for b in self.bufs])

    @torch.no_grad()
    def undo_nonfinite(self) -> None:
        for b, old in zip(self.bufs, self.saved, strict=True):
            if not bool(torch.isfinite(b).all()):
                b.copy_(old)


def _adam(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with its fused kernel on CPU and CUDA: one update for all parameters, where
    the default loop costs a few ops per parameter (a quantized model adds one small
    scale parameter per quantizer; a W4A4 MLP's step is 17 % faster)."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _update(loss, opt, sched, buffers: _BufferGuard, where: tuple, clip=None) -> float:
    """One optimizer step on ``loss`` (gradient-norm clipped when ``clip`` = (model,
    max norm)); its value. A non-finite loss restores the buffers and raises a
    ValueError naming ``where`` = (function, epoch, step, advice) before any backward
    or update (the message is only built then: this is the per-step hot path)."""
    value = float(loss.detach())  # the one host sync per step, before the update
    if not math.isfinite(value):
        buffers.undo_nonfinite()
        name, epoch, step, advice = where
        raise ValueError(
            f"{name}: the loss is {value} at epoch {epoch + 1}, step {step + 1}: stopped "
            f"before updating the model, {advice}"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(clip[0].parameters(), clip[1])
    opt.step()
    sched.step()
    return value


_FIT_ADVICE = (
    "which keeps its last finite weights and scales (lower lr, check the data, or widen "
    "the formats)"
)
_CTC_ADVICE = "which keeps its last finite weights (lower lr or clip_norm, or widen the formats)"


class _Compiled:
    """``model`` under torch.compile once its quantizers have settled (module docstring
    of :func:`fit`); eager before."""

    def __init__(self, model: nn.Module) -> None:
        from hwquant.nn.quantizer import Quantizer

        self.model, self.compiled = model, None
        self.quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            if any(q.state in ("uninitialized", "warmup") for q in self.quantizers):
                return self.model(x)
            self.compiled = torch.compile(self.model)
        return self.compiled(x)


def fit(
    model: nn.Module,
    train: DataLoader,
    test: DataLoader,
    epochs: int = 10,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    progress: bool = True,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    compile: bool = False,
) -> FitResult:
    """Adam + cosine learning-rate decay; test accuracy after every epoch.

    ``extra_loss(model)`` is added to the loss (e.g. a regularizer or penalty).
    ``compile`` runs the model under ``torch.compile``. Batches run eagerly while a
    quantizer still initializes or warms its scale up (``ScaleSpec.warmup``: its state
    changes every batch), then the model is compiled once, as one graph per layer. On
    CPU, integer quantizers already run as compiled kernels in eager mode, so eager is
    the fast path there (``benchmarks/peers.py``: a W4A4 MLP step 1.7× float eager,
    1.6–2.0× compiled depending on the CPU; the 2-conv CNN 1.13× eager, 2.3× compiled,
    as torch's CPU compiler makes even the float CNN slower). Compiling can pay off
    where the kernels do not apply (minifloat / power-of-two formats, CUDA tensors):
    time both before choosing it.
    With ``progress`` a tqdm bar shows the epoch, loss and accuracy.
    A non-finite loss (nan / inf) stops training with a ValueError naming the epoch
    and step, before that step's backward and update: no nan reaches the model.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    run = _Compiled(model) if compile else model
    opt = _adam(model, lr, weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train))
    history: list[dict[str, float]] = []
    buffers = _BufferGuard(model)
    bar = tqdm(range(epochs), desc="train", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        total = 0.0
        for step, (x, y) in enumerate(train):
            buffers.save()
            loss = loss_fn(run(x.to(device)), y.to(device))
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            total += _update(loss, opt, sched, buffers, ("fit", epoch, step, _FIT_ADVICE))
        acc = evaluate(model, test)
        history.append({"epoch": epoch + 1, "loss": total / len(train), "test_accuracy": acc})
        bar.set_postfix(loss=f"{total / len(train):.3f}", acc=f"{acc:.4f}")
        if progress:
            bar.write(
                f"epoch {epoch + 1:>2}/{epochs}  loss {total / len(train):.4f}  test acc {acc:.4f}"
            )
    return FitResult(history[-1]["test_accuracy"], history)


# --------------------------------------------------------------------------- CTC
@dataclass
class CTCFitResult:
    """The test character error rate after the last epoch and the per-epoch history."""

    test_cer: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"test_cer": self.test_cer, "history": self.history}


def _crop(x: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    # a batch of lines zero-padded to the split's widest: run only to this batch's widest
    return x[..., : int(widths.max())]


@torch.no_grad()
def evaluate_ctc(model: nn.Module, loader: DataLoader) -> float:
    """Character error rate of ``model`` (in eval mode, greedy CTC decoding) over
    ``loader``'s (images, widths, labels, label_lengths) batches.

    >>> from hwquant.datasets import text_lines
    >>> from hwquant.models import TextLineBiLSTM
    >>> d = text_lines(n_train=4, n_test=4)
    >>> evaluate_ctc(TextLineBiLSTM(hidden=8), d.test.loader()) >= 0.0
    True
    """
    from hwquant.models.ocr import character_error_rate, greedy_decode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions: list[list[int]] = []
    references: list[list[int]] = []
    for x, widths, labels, label_lengths in loader:
        log_probs = model(_crop(x, widths).to(device))
        predictions += greedy_decode(log_probs, widths)
        references += [y[:n].tolist() for y, n in zip(labels, label_lengths, strict=True)]
    model.train(was_training)
    return character_error_rate(predictions, references)


def fit_ctc(
    model: nn.Module,
    train: DataLoader,
    test: DataLoader,
    epochs: int = 10,
    lr: float = 3e-3,
    clip_norm: float = 1.0,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> CTCFitResult:
    """Train a sequence model with the CTC loss (blank = 0): Adam, cosine learning-rate
    decay, gradient-norm clipping at ``clip_norm`` (recurrent nets need it), test
    character error rate (:func:`evaluate_ctc`) after every epoch.

    The loaders yield (images, widths, labels, label_lengths), as
    :meth:`hwquant.datasets.TextLineSet.loader` does; each batch is cropped to its
    widest line, and ``model(images)`` returns [N, T = width, C] log-probabilities
    (e.g. :class:`hwquant.models.TextLineBiLSTM`). A non-finite loss stops training
    with a ValueError before the update, as in :func:`fit`. Seed torch (model
    initialization) and the loader (its ``seed``) for a reproducible run.

    >>> import torch
    >>> from hwquant.datasets import text_lines
    >>> from hwquant.models import TextLineBiLSTM
    >>> _ = torch.manual_seed(0)
    >>> d = text_lines(n_train=16, n_test=8)
    >>> r = fit_ctc(TextLineBiLSTM(hidden=8), d.train.loader(8), d.test.loader(), epochs=1,
    ...             progress=False)
    >>> len(r.history), r.test_cer >= 0.0
    (1, True)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    opt = _adam(model, lr, weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train))
    history: list[dict[str, float]] = []
    buffers = _BufferGuard(model)
    bar = tqdm(range(epochs), desc="train (CTC)", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        total = 0.0
        for step, (x, widths, labels, label_lengths) in enumerate(train):
            buffers.save()
            log_probs = model(_crop(x, widths).to(device))  # [N, T, C]
            loss = F.ctc_loss(
                log_probs.transpose(0, 1),  # CTC takes [T, N, C]
                labels.to(device),
                widths,
                label_lengths,
                blank=0,
                zero_infinity=True,
            )
            total += _update(
                loss, opt, sched, buffers, ("fit_ctc", epoch, step, _CTC_ADVICE), (model, clip_norm)
            )
        cer = evaluate_ctc(model, test)
        history.append({"epoch": epoch + 1, "loss": total / len(train), "test_cer": cer})
        bar.set_postfix(loss=f"{total / len(train):.3f}", cer=f"{cer:.4f}")
        if progress:
            bar.write(
                f"epoch {epoch + 1:>2}/{epochs}  loss {total / len(train):.4f}  CER {cer:.4f}"
            )
    return CTCFitResult(history[-1]["test_cer"], history)
