"""Gallery benchmark (issue: gallery): query latency at 1k, 10k and 100k records on SQLite.

    .venv/bin/python -m bench.gallery [--sizes 1000 10000 100000] [--repeats 200]

Fills a temporary SQLite database with bulk inserts (one owner's gallery of N images, plus
10 % more for a second owner so owner isolation is part of every query), then times the
common queries of the gallery's record store, in-process (the SQL and the rows built from
it; gRPC adds the same constant to each). Each query runs `--repeats` times with varied
arguments; p50 and p99 are reported. Goal: p99 ≤ 50 ms at 100k records.

Results are written into bench/RESULTS.md (section "Gallery"), with the machine.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy
from sqlalchemy import Engine, insert

from services.common.sql import create_engine_for
from services.gallery.records import (
    BoardImageModel,
    BoardRecords,
    ImageRecords,
    LoraUse,
    NewImage,
    create_schema,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
OWNER, OTHER = "bench", "other"
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
BATCH = 5000
GOAL_MS = 50.0
_VOCABULARY = """
house villa cabin tower bridge castle barn pavilion loft studio kitchen garden forest lake
river mountain desert city street harbour island meadow canyon valley cliff timber glass
concrete stone brick steel marble wood copper linen velvet paper modern brutalist gothic
baroque minimal rustic nordic japanese industrial organic morning evening night dusk dawn
golden hour overcast foggy rainy snowy sunny warm cold soft dramatic cinematic volumetric
light shadow reflection bokeh interior exterior aerial closeup wide angle portrait
landscape panorama sketch watercolor oil painting photograph render illustration concept
art masterpiece detailed intricate sharp focus high quality 8k photorealistic award winning
"""
WORDS = tuple(_VOCABULARY.split())
MODELS = ["v1-5-pruned-emaonly", "dreamshaper_8", "realisticVision", "archiDiffusion", "anything"]
LORAS = [f"lora_{i:02d}" for i in range(20)]
TAGS = [f"tag{i:02d}" for i in range(50)]


@dataclass
class Fixture:
    """What the queries pick their arguments from."""

    ids: list[str]
    boards: list[str]
    parents: list[str]


def _record(rng: random.Random, index: int, total: int, owner: str, ids: list[str]) -> NewImage:
    """Image `index` of `total`; `ids` are the owner's images made before it (parents)."""
    created = START + SPAN * (index / total)
    prompt = " ".join(rng.choices(WORDS, k=rng.randint(8, 20)))
    loras = [LoraUse(rng.choice(LORAS), 0.8)] if rng.random() < 0.3 else []
    tags = rng.sample(TAGS, rng.randint(1, 3)) if rng.random() < 0.4 else []
    parent = rng.choice(ids) if ids and rng.random() < 0.2 else None
    return NewImage(
        id=uuid.uuid4().hex,
        owner=owner,
        object_key=f"{owner}/{index}.png",
        width=512,
        height=512,
        seed=rng.randint(0, 2**32 - 2),
        steps=20,
        cfg_scale=7.0,
        prompt=prompt,
        negative_prompt="blurry, lowres",
        sampler="Euler a",
        model_name=rng.choice(MODELS),
        model_hash="6ce0161689",
        loras=loras,
        tags=tags,
        favourite=rng.random() < 0.05,
        parent_id=parent,
        created_at=created,
    )


def fill(engine: Engine, records: ImageRecords, fixture: Fixture, target: int, total: int) -> None:
    """Grow the owner's gallery to `target` images (time order across the whole run)."""
    rng = random.Random(len(fixture.ids))
    while len(fixture.ids) < target:
        start = len(fixture.ids)
        batch: list[NewImage] = []
        recent = fixture.ids[-500:]
        for index in range(start, min(start + BATCH, target)):
            batch.append(_record(rng, index, total, OWNER, recent))
            recent.append(batch[-1].id or "")
        ids = records.add_many(batch)
        others = [_record(rng, start + i, total, OTHER, []) for i in range(len(batch) // 10)]
        records.add_many(others)
        on_boards = [
            {"board_id": rng.choice(fixture.boards), "image_id": image_id}
            for image_id in ids
            if rng.random() < 0.02
        ]
        with engine.begin() as connection:
            connection.execute(insert(BoardImageModel), on_boards)
        fixture.ids.extend(ids)
        fixture.parents.extend(r.parent_id for r in batch if r.parent_id)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")


Query = Callable[[random.Random], object]


def queries(records: ImageRecords, fixture: Fixture) -> dict[str, Query]:
    """The common queries, each with arguments drawn per call."""
    cursors = _cursors(records, pages=10)

    def month(rng: random.Random) -> dict[str, datetime]:
        after = START + timedelta(days=rng.randint(0, 330))
        return {"created_after": after, "created_before": after + timedelta(days=30)}

    return {
        "first page (50, newest first)": lambda rng: records.list(OWNER, limit=50),
        "next page by cursor (pages 2-10)": lambda rng: records.list(
            OWNER, limit=50, cursor=rng.choice(cursors)
        ),
        "filter: model": lambda rng: records.list(OWNER, model=rng.choice(MODELS)),
        "filter: LoRA": lambda rng: records.list(OWNER, lora=rng.choice(LORAS)),
        "filter: tag": lambda rng: records.list(OWNER, tag=rng.choice(TAGS)),
        "filter: board": lambda rng: records.list(OWNER, board_id=rng.choice(fixture.boards)),
        "filter: favourite": lambda rng: records.list(OWNER, favourite=True),
        "filter: date range (30 days)": lambda rng: records.list(OWNER, **month(rng)),
        "search: one word": lambda rng: records.list(OWNER, search=rng.choice(WORDS)),
        "search: three words": lambda rng: records.list(
            OWNER, search=" ".join(rng.sample(WORDS, 3))
        ),
        "search + tag + favourite": lambda rng: records.list(
            OWNER, search=rng.choice(WORDS), tag=rng.choice(TAGS), favourite=False
        ),
        "get by id": lambda rng: records.get(OWNER, rng.choice(fixture.ids)),
        "lineage (ancestors and descendants)": lambda rng: records.lineage(
            OWNER, rng.choice(fixture.parents)
        ),
    }


def _cursors(records: ImageRecords, pages: int) -> list[str]:
    """The cursors of pages 2..`pages` of the owner's gallery."""
    cursors: list[str] = []
    page = records.list(OWNER, limit=50)
    while page.next_cursor is not None and len(cursors) < pages - 1:
        cursors.append(page.next_cursor)
        page = records.list(OWNER, limit=50, cursor=page.next_cursor)
    return cursors


def measure(call: Query, repeats: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds over `repeats` calls after a few warm-up calls."""
    rng = random.Random(7)
    for _ in range(5):
        call(rng)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(rng)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99_index = min(len(times) - 1, round(0.99 * (len(times) - 1)))
    return statistics.median(times), times[p99_index]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import sqlite3

    return (
        f"{cpu}, {threads} threads; Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}"
    )


def run(sizes: list[int], repeats: int) -> str:
    results: dict[str, dict[int, tuple[float, float]]] = {}
    fill_seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="sdstack-bench-gallery-") as folder:
        engine = create_engine_for(f"sqlite:///{folder}/gallery.db")
        create_schema(engine)
        records = ImageRecords(engine)
        boards = [BoardRecords(engine).create(OWNER, f"board {i}").id for i in range(10)]
        fixture = Fixture(ids=[], boards=boards, parents=[])
        total = max(sizes)
        for size in sorted(sizes):
            started = time.perf_counter()
            fill(engine, records, fixture, size, total)
            fill_seconds[size] = time.perf_counter() - started
            sys.stderr.write(f"{size} records (filled in {fill_seconds[size]:.1f} s)\n")
            for name, call in queries(records, fixture).items():
                results.setdefault(name, {})[size] = measure(call, repeats)
                p50, p99 = results[name][size]
                sys.stderr.write(f"  {name:<36} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms\n")
        engine.dispose()
    return report(results, sorted(sizes), fill_seconds, repeats)


def report(
    results: dict[str, dict[int, tuple[float, float]]],
    sizes: list[int],
    fill_seconds: dict[int, float],
    repeats: int,
) -> str:
    largest = sizes[-1]
    worst = max(values[largest][1] for values in results.values())
    verdict = "✅ met" if worst <= GOAL_MS else "❌ not met"
    header = " | ".join(f"{size:,} p50 / p99".replace(",", " ") for size in sizes)
    lines = [
        "## Gallery",
        "",
        "Query latency of the gallery's record store on SQLite (the default), in-process: the",
        "SQL plus the rows built from it. One owner's gallery of N images (30 % with a LoRA,",
        "40 % tagged, 5 % favourites, 2 % on one of 10 boards, 20 % made from an earlier",
        "image) next to another owner's 0.1·N; each query runs "
        f"{repeats} times with varied arguments",
        "(model, LoRA, tag, board, 30-day window, search words, ids). Filled with bulk inserts.",
        "Command: `.venv/bin/python -m bench.gallery`.",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "",
        f"| query (ms) | {header} |",
        "| --- | " + " | ".join("---" for _ in sizes) + " |",
    ]
    for name, values in results.items():
        cells = " | ".join(f"{values[s][0]:.2f} / {values[s][1]:.2f}" for s in sizes)
        lines.append(f"| {name} | {cells} |")
    fills = ", ".join(f"{s:,}: {fill_seconds[s]:.1f} s".replace(",", " ", 1) for s in sizes)
    lines += [
        "",
        f"Goal p99 ≤ {GOAL_MS:.0f} ms at {largest:,} records: worst p99 {worst:.2f} ms, {verdict}.",
        f"Fill time (cumulative steps, bulk inserts with the full-text index): {fills}.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace the `## Gallery` section of RESULTS.md (or append it)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find("## Gallery")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    section = run(args.sizes, args.repeats)
    sys.stdout.write(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
