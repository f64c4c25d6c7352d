"""Run a sweep: every point once, in this process, in local worker processes
(``jobs``) or on a Ray cluster (``ray_address``), with one results file.

Finished rows are appended to ``points.jsonl`` in the output folder as they arrive,
so an interrupted sweep resumes where it stopped: a re-run skips every point whose
key is there (made with the same settings; other settings are refused). At the end
``results.json`` and ``results.csv`` hold the requested points in design-space order;
they carry no timings, so the same sweep gives the same files on any backend
(timings go to ``timings.json``).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hwquant.sweep.models import float_model_path
from hwquant.sweep.point import Settings, evaluate_point
from hwquant.sweep.space import Point

__all__ = ["CSV_FIELDS", "RAY_HINT", "load_rows", "run_sweep"]

RAY_HINT = "install the ray extra: pip install 'hwquant[ray]' (or: make ray)"
CSV_FIELDS = (
    "key", "model", "family", "w_bits", "a_bits", "weights", "acts", "best", "accuracy",
    "val_sqnr_db", "test_sqnr_db", "luts", "mac_luts", "dsps",
)  # fmt: skip


def _header(settings: Settings) -> dict[str, Any]:
    return {"settings": settings.to_dict()}


def load_rows(out: Path, settings: Settings | None = None) -> dict[str, dict]:
    """Finished rows of ``out/points.jsonl`` by key; with ``settings``, a file made
    with other settings is refused (``ValueError``) rather than mixed."""
    path = Path(out) / "points.jsonl"
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    try:
        head = json.loads(lines[0])
        rows = [json.loads(x) for x in lines[1:] if x.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a sweep results file ({e})") from None
    if settings is not None and head != _header(settings):
        raise ValueError(
            f"{path} was made with other settings ({head.get('settings')}); "
            "use another output folder or delete it"
        )
    return {r["key"]: r for r in rows}


def _in_process(points: Sequence[Point], settings: Settings) -> Iterator[dict]:
    for p in points:
        yield evaluate_point(p, settings)


def _processes(points: Sequence[Point], settings: Settings, jobs: int) -> Iterator[dict]:
    # spawn: a fresh interpreter per worker (fork after torch has threads is unsafe)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(evaluate_point, p, settings) for p in points]
        for f in as_completed(futures):
            yield f.result()


def _ray(points: Sequence[Point], settings: Settings, address: str, jobs: int) -> Iterator[dict]:
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError(f"--ray needs the 'ray' package; {RAY_HINT}") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(evaluate_point)
        pending = [task.remote(p, settings) for p in points]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    points: Sequence[Point],
    settings: Settings,
    out: str | Path,
    *,
    jobs: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Evaluate every point not already in ``out`` and return all rows in ``points``'
    order. ``jobs``: local worker processes (1: this process); ``ray_address``: a Ray
    cluster (``"local"`` starts a local instance with ``jobs`` CPUs, ``"auto"`` joins
    the cluster this machine belongs to, or ``"ray://HOST:10001"``)."""
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the design space has repeated points")
    out = Path(out)
    done = load_rows(out, settings)
    todo = [p for p in points if p.key not in done]
    for name in sorted({p.model for p in todo}):  # train once, here, before any worker
        float_model_path(name, Path(settings.cache), settings.seed, settings.epochs)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "points.jsonl"
    if not jsonl.exists() or not jsonl.read_text().strip():
        jsonl.write_text(json.dumps(_header(settings)) + "\n")
    t0 = time.perf_counter()
    if ray_address is not None:
        rows = _ray(todo, settings, ray_address, jobs)
    elif jobs > 1 and len(todo) > 1:
        rows = _processes(todo, settings, jobs)
    else:
        rows = _in_process(todo, settings)
    with _bar(len(todo), progress) as bar, jsonl.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            done[row["key"]] = row
            bar.update(1)
            if on_row is not None:
                on_row(row)
    result = [done[k] for k in keys]
    _write(out, result, settings, len(todo), time.perf_counter() - t0, jobs, ray_address)
    return result


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep points", unit="pt", disable=not progress or not total)


def _write(out: Path, rows: list[dict], settings: Settings, n_new: int, seconds: float,
           jobs: int, ray_address: str | None) -> None:  # fmt: skip
    (out / "results.json").write_text(
        json.dumps({"settings": settings.to_dict(), "points": rows}, indent=1, sort_keys=True)
    )
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    backend = f"ray {ray_address}" if ray_address else f"{jobs} process(es)"
    (out / "timings.json").write_text(
        json.dumps({"points_run": n_new, "seconds": round(seconds, 2), "backend": backend})
    )
