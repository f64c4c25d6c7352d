"""Power-of-two codes and level-set formats (APoT, MSQ, ternary).

PoT (QKeras ``quantized_po2``): q = sign(v)·2^clip(round(log2|v|), e_min, 0);
the rounding happens in the log domain, so the threshold between 2^e and
2^(e+1) is 2^(e+1/2). With a zero level, |v| < 2^(e_min − 1) maps to 0.

Level sets: q = the nearest level; ties go to the lower level.

Integer view (shift-add hardware): with D = ``fmt.code_multiplier`` every level ℓ
is an integer m = ℓ·D at scale s/D. A PoT code is m = ±2^k (one shift), an APoT /
SP2 code m = ±(2^k1 + 2^k2) (two shifts and an add): :func:`shift_terms` splits
integer codes into such signed power-of-two terms, :func:`sign_magnitude` gives
the ``bits``-wide code a weight memory stores and :func:`pack_codes` packs them.

>>> import torch
>>> pot_round(torch.tensor([0.3, -0.7, 0.001]), min_exponent=-3).tolist()
[0.25, -0.5, 0.125]
>>> levels = torch.tensor([-1.0, 0.0, 1.0])
>>> round_to_levels(torch.tensor([0.49, 0.51, -2.0]), levels, level_midpoints(levels)).tolist()
[0.0, 1.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "bipolar_round",
    "level_midpoints",
    "pack_codes",
    "pot_round",
    "round_to_levels",
    "shift_terms",
    "sign_magnitude",
    "standardize_rows",
    "unpack_codes",
]


def pot_round(
    v: Tensor,
    min_exponent: int,
    has_zero: bool = False,
    rounding: Callable[[Tensor], Tensor] = torch.round,
) -> Tensor:
    """sign(v)·2^clip(round(log2|v|), e_min, 0); v = 0 maps to +2^e_min without a zero level."""
    a = v.abs()
    e = torch.clamp(rounding(torch.log2(a)), min_exponent, 0)
    q = torch.where(v < 0, -torch.exp2(e), torch.exp2(e))
    if has_zero:
        q = torch.where(a < 2.0 ** (min_exponent - 1), torch.zeros_like(q), q)
    return q


def level_midpoints(levels: Tensor) -> Tensor:
    """Decision thresholds between consecutive ascending levels."""
    return (levels[1:] + levels[:-1]) / 2


def round_to_levels(v: Tensor, levels: Tensor, midpoints: Tensor) -> Tensor:
    """Nearest of the ascending ``levels`` (ties to the lower one)."""
    return levels[torch.bucketize(v, midpoints)]


def bipolar_round(v: Tensor) -> Tensor:
    """+1 if v ≥ 0 else −1 (QONNX ``BipolarQuant``)."""
    return torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))


def standardize_rows(rows: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Weight normalization of APoT (Li et al., ICLR 2020): per row r,
    (r − mean(r)) / σ with σ = sqrt(var(r) + eps) (population variance).

    Returns (normalized rows, σ [R, 1]). The eps inside the square root keeps a
    constant (or all-zero) row finite in value *and* gradient: it maps to zeros with
    σ = sqrt(eps) (a plain ``std`` would divide 0 by 0 in the backward pass).

    >>> r, s = standardize_rows(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    >>> r.tolist(), [round(float(v), 4) for v in s.flatten()]
    ([[-1.0, 1.0], [0.0, 0.0]], [1.0, 0.0001])
    """
    mu = rows.mean(1, keepdim=True)
    centred = rows - mu
    sigma = torch.sqrt(centred.pow(2).mean(1, keepdim=True) + eps)
    return centred / sigma, sigma


def shift_terms(m: Tensor, max_terms: int | None = None) -> tuple[Tensor, Tensor]:
    """Integer codes m as sums of signed powers of two: m = Σ_t sign_t · 2^shift_t.

    Codes whose magnitude has at most two set bits (every PoT, APoT and SP2 code)
    use their binary digits (all terms positive); other integers (the fixed-point
    rows of MSQ, uniform codes) use the non-adjacent form, the signed-digit form with
    the fewest non-zero terms (7 = 8 − 1). Returns (sign, shift), int64
    [T, *m.shape] with T the most terms any code needs (unused terms have sign 0);
    ``max_terms`` raises ``ValueError`` if some code needs more.

    >>> sign, shift = shift_terms(torch.tensor([10, -3, 0, 7, 1]))
    >>> sign.tolist(), shift.tolist()
    ([[1, -1, 0, -1, 1], [1, -1, 0, 1, 0]], [[1, 0, 0, 0, 0], [3, 1, 0, 3, 0]])
    """
    a = m.long().abs()
    binary = _popcount(a) <= 2
    digits: list[Tensor] = []  # digit j ∈ {−1, 0, 1} of |m|, least significant first
    rest = a.clone()
    j = 0
    while bool((rest != 0).any()):
        naf = torch.where(rest % 2 == 1, 2 - (rest % 4), torch.zeros_like(rest))
        rest = (rest - naf) // 2  # non-adjacent form: ±1 chosen so the next digit is 0
        digits.append(torch.where(binary, (a >> j) & 1, naf))
        j += 1
    nonzero = [d != 0 for d in digits]
    total = int(torch.stack(nonzero).long().sum(0).max()) if digits else 0
    if max_terms is not None and total > max_terms:
        raise ValueError(f"codes need {total} power-of-two terms, more than {max_terms}")
    sign = torch.zeros((total, *m.shape), dtype=torch.long)
    shift = torch.zeros_like(sign)
    count = torch.zeros_like(a)  # terms placed so far, per code
    for j, (d, nz) in enumerate(zip(digits, nonzero, strict=True)):
        for t in range(total):
            put = nz & (count == t)
            sign[t] = torch.where(put, d, sign[t])
            shift[t] = torch.where(put, torch.full_like(a, j), shift[t])
        count = count + nz.long()
    return sign * torch.sign(m.long()), shift


def _popcount(a: Tensor) -> Tensor:
    count = torch.zeros_like(a)
    rest = a.clone()
    while bool((rest != 0).any()):
        count += rest & 1
        rest = rest >> 1
    return count


def sign_magnitude(m: Tensor, magnitudes: Tensor) -> Tensor:
    """The stored code of integer weights m: sign bit (1 = negative) above the index
    of |m| in the ascending integer ``magnitudes`` (b − 1 bits for 2^(b−1) magnitudes).
    ``ValueError`` if some |m| is not one of them.

    >>> sign_magnitude(torch.tensor([3, -10, 0]), torch.tensor([0, 1, 2, 3, 4, 6, 8, 10])).tolist()
    [3, 15, 0]
    """
    mags = magnitudes.long()
    a = m.long().abs()
    idx = torch.searchsorted(mags, a)
    ok = (idx < mags.numel()) & (mags[idx.clamp(max=mags.numel() - 1)] == a)
    if not bool(ok.all()):
        bad = sorted({int(v) for v in a[~ok].flatten()[:5]})
        raise ValueError(f"codes {bad} are not levels (allowed magnitudes {mags.tolist()})")
    width = max(1, (mags.numel() - 1).bit_length())
    return idx + (m < 0).long() * (1 << width)


def pack_codes(codes: Tensor, bits: int) -> bytes:
    """Unsigned ``bits``-wide codes packed little-endian into bytes (code i at bit
    offset i·bits), what a weight memory of ``bits`` per weight holds.

    >>> pack_codes(torch.tensor([1, 15, 3]), 4).hex()
    'f103'
    >>> unpack_codes(pack_codes(torch.tensor([5, 0, 7, 2]), 3), 3, 4).tolist()
    [5, 0, 7, 2]
    """
    c = codes.long().flatten()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must be in [0, {(1 << bits) - 1}] to pack into {bits} bits")
    bit_idx = torch.arange(bits)
    flat = ((c.unsqueeze(1) >> bit_idx) & 1).flatten()  # [n·bits], LSB first
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, torch.zeros(pad, dtype=torch.long)]).reshape(-1, 8)
    return bytes((flat << torch.arange(8)).sum(1).tolist())


def unpack_codes(data: bytes, bits: int, n: int) -> Tensor:
    """The first ``n`` ``bits``-wide codes of :func:`pack_codes`'s bytes (int64)."""
    if len(data) * 8 < n * bits:
        raise ValueError(f"{len(data)} bytes hold fewer than {n} codes of {bits} bits")
    b = torch.tensor(list(data), dtype=torch.long)
    flat = ((b.unsqueeze(1) >> torch.arange(8)) & 1).flatten()[: n * bits].reshape(n, bits)
    return (flat << torch.arange(bits)).sum(1)
