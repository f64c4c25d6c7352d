"""ESPCN ×2 super-resolution with A2Q / A2Q+ (issue 4, experiment 4b).

Data: grayscale patches of scikit-image's bundled photos (no download); ``camera`` is
held out and upscaled whole for the test PSNR. LR images are bicubic (antialiased)
×1/2 downscales of the HR ones.

Model: ESPCN (Shi et al., 2016), small: conv5×5(1→32)·ReLU → conv3×3(32→16)·ReLU →
conv3×3(16→4) → pixel shuffle ×2. Quantized W4A4 with an 8-bit unsigned image input.

For P ∈ {32, 16, 14, 12, 10}: baseline QAT run with P-bit wrapping accumulators, and
A2Q / A2Q+ QAT at P (EP-init or accumulator-aware PTQ init), beside bicubic upsampling
and the float model. PSNR (dB) on the held-out image, from the fake-quantized model and
from bit-exact integer execution. Writes ``espcn_results.json`` / ``espcn_tables.md``.
Run: ``.venv/bin/python examples/a2q/espcn_a2q.py`` (about 6.5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import a2q_common as C

import hwquant

HERE = Path(__file__).resolve().parent
TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "moon", "coins", "clock", "page")
TEST_IMAGE = "camera"
SHAVE = 4  # border pixels left out of the PSNR (zero padding at the edges)


@dataclass
class Settings:
    P: tuple[int, ...] = (32, 16, 14, 12, 10)
    inits: tuple[str, ...] = ("ep", "ptq")
    patch: int = 32  # HR patch side
    n_patches: int = 4096
    batch: int = 32
    float_steps: int = 6000
    qat_steps: int = 1500
    lr_float: float = 2e-3
    lr_qat: float = 1e-3
    widths: tuple[int, int] = (32, 16)
    test_crop: int | None = None  # HR test image side (None: the whole 512×512 image)
    seed: int = 0
    out: Path | None = HERE
    log: list[str] = field(default_factory=list)


class ESPCN(nn.Module):
    """Efficient sub-pixel CNN, ×r."""

    def __init__(self, r: int = 2, c1: int = 32, c2: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, r * r, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x))


# ---------------------------------------------------------------- data
def gray(name: str) -> torch.Tensor:
    from skimage import color, data, util

    img = util.img_as_float(getattr(data, name)())
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    return torch.from_numpy(np.ascontiguousarray(img)).float()[None, None]  # [1, 1, H, W]


def downscale(hr: torch.Tensor) -> torch.Tensor:
    return F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True).clamp(0, 1)


def patches(s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(s.seed)
    images = [gray(n) for n in TRAIN_IMAGES]
    out = []
    for i in range(s.n_patches):
        img = images[i % len(images)]
        h, w = img.shape[-2:]
        y = int(torch.randint(0, h - s.patch + 1, (1,), generator=g))
        x = int(torch.randint(0, w - s.patch + 1, (1,), generator=g))
        out.append(img[..., y : y + s.patch, x : x + s.patch])
    hr = torch.cat(out)
    return downscale(hr), hr


def psnr(sr: torch.Tensor, hr: torch.Tensor) -> float:
    sr, hr = sr.clamp(0, 1), hr
    if SHAVE:
        sr = sr[..., SHAVE:-SHAVE, SHAVE:-SHAVE]
        hr = hr[..., SHAVE:-SHAVE, SHAVE:-SHAVE]
    mse = float((sr.double() - hr.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# ---------------------------------------------------------------- training
def train(model: nn.Module, lr_img, hr_img, steps: int, lr: float, s: Settings, extra=None):
    g = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(lr_img), (s.batch,), generator=g)
        loss = F.mse_loss(model(lr_img[idx]), hr_img[idx])
        if extra is not None:
            loss = loss + extra(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def qat(s: Settings, fm: nn.Module, data, method: str, P, init: str = "ep") -> nn.Module:
    torch.manual_seed(s.seed)
    rec = C.recipe(method, 4, 4, P, first={"body.0": C.act_spec(8, signed=False)})
    model = hwquant.quantize(fm, rec)
    lr_img, hr_img = data
    calib = lr_img[:256]
    extra = C.setup(model, calib, method, init)
    return train(model, lr_img, hr_img, s.qat_steps, s.lr_qat, s, extra)


def say(s: Settings, text: str) -> None:
    s.log.append(text)
    print(text, flush=True)


def run(s: Settings) -> dict:
    t0 = time.time()
    torch.manual_seed(s.seed)
    data = patches(s)
    hr_test = gray(TEST_IMAGE)
    if s.test_crop:
        hr_test = hr_test[..., : s.test_crop, : s.test_crop]
    lr_test = downscale(hr_test)

    def quality(out: torch.Tensor) -> float:
        return psnr(out, hr_test)

    bicubic = quality(F.interpolate(lr_test, scale_factor=2, mode="bicubic"))
    fm = train(ESPCN(2, *s.widths), *data, s.float_steps, s.lr_float, s)
    with torch.no_grad():
        fpsnr = quality(fm(lr_test))
    say(s, f"held-out '{TEST_IMAGE}': bicubic {bicubic:.2f} dB, float ESPCN {fpsnr:.2f} dB")
    rows = []
    base = qat(s, fm, data, "baseline", None)
    with torch.no_grad():
        bq = quality(base(lr_test))
    for P in s.P:
        rows.append(row(base, lr_test, P, bq, quality, method="baseline", init="-"))
    for method in ("A2Q", "A2Q+"):
        for init in s.inits:
            for P in s.P:
                m = qat(s, fm, data, method, P, init)
                with torch.no_grad():
                    q = quality(m(lr_test))
                rows.append(row(m, lr_test, P, q, quality, method=method, init=init))
    results = {
        "bicubic_psnr": bicubic,
        "float_psnr": fpsnr,
        "rows": rows,
        "settings": {k: v for k, v in asdict(s).items() if k not in ("out", "log")},
    }
    for line in table(results):
        say(s, line)
    results["seconds"] = time.time() - t0
    say(s, f"total {results['seconds']:.0f} s")
    if s.out is not None:
        (s.out / "espcn_results.json").write_text(json.dumps(results, indent=1) + "\n")
        (s.out / "espcn_tables.md").write_text("\n".join(s.log) + "\n")
    return results


def row(model, x, P: int, value: float, quality, **extra) -> dict:
    au = C.audit(model, x, P)
    return {
        "P": P,
        "psnr": value,
        "int_psnr_wrap": C.integer_metric(model, x, P, quality),
        **asdict(au),
        **extra,
    }


def table(res: dict) -> list[str]:
    out = [
        "",
        f"### ESPCN ×2, W4A4 (8-bit input), held-out '{TEST_IMAGE}': PSNR dB "
        f"(bicubic {res['bicubic_psnr']:.2f}, float {res['float_psnr']:.2f})",
        "",
        "| method | init | P | PSNR (fake-quant) | PSNR (integer, P-bit wrap) | guaranteed P "
        "| sparsity % | overflows on test image | worst-case overflowing channels |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['method']} | {r['init']} | {r['P']} | {C.fmt_db(r['psnr'])} "
            f"| {C.fmt_db(r['int_psnr_wrap'])} | {r['guaranteed_P']} | {C.fmt_pct(r['sparsity'])} "
            f"| {r['data_overflows']} | {r['worst_case_overflow_channels']} |"
        )
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)  # small convolutions: one thread avoids OpenMP spin-waits
    run(Settings())
