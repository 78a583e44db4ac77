"""Console log search over one very long line: the one-pass search against the old one.

A stream holding one line of N MiB (64 KiB chunks, as a worker stores them), a short line
before and after, is searched for a word it does not contain (the whole stream is read). The
baseline, measured in the same run on the same rows, is the search the hub had before
(`old_search`, copied here verbatim): it joined the line read so far to every chunk, so its cost
grew with the square of the line's length (38 s for 100 MB on the issue's machine).

Then three searches at once of the largest stream, while another thread times a small database
query every 50 ms (what another page does): the wall time of the three, and that query's worst
latency, for both searches.

    python -m bench.search                       # 10, 25, 100 MiB; the old one up to 25 MiB
    python -m bench.search --sizes 100 --baseline-max 100   # the issue's case, both (slow)

Uses DATABASE_URL when set (PostgreSQL: the rows are removed at the end), else a scratch SQLite
database under var/bench/search. Target: 100 MiB answered within 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import VAR, print_table, write_result

CHUNK = 64 * 1024
TARGET_SECONDS = 2.0
MIB = 1 << 20


def old_search(iid: str, stream: str, needle: str, limit: int = 500) -> list[tuple[int, str]]:
    """The search the hub had until issue 16 (sequences/streams.py:search_lines), verbatim."""
    from sequences.models import StreamChunk

    needle_l = needle.lower()
    found: list[tuple[int, str]] = []
    number = 0
    tail = b""
    rows = StreamChunk.objects.filter(instance_id=iid, stream=stream).order_by("seq")
    for data in rows.values_list("data", flat=True).iterator(chunk_size=64):
        lines = (tail + bytes(data)).split(b"\n")
        tail = lines.pop()
        for raw in lines:
            number += 1
            text = raw.decode("utf-8", "replace")
            if needle_l in text.lower():
                found.append((number, text))
                if len(found) >= limit:
                    return found
    if tail and needle_l in tail.decode("utf-8", "replace").lower():
        found.append((number + 1, tail.decode("utf-8", "replace")))
    return found


def new_search(iid: str, stream: str, needle: str) -> Any:
    from dashboard.search import search_stream

    return search_stream(iid, stream, needle, seconds=600)


def setup_django() -> None:
    folder = VAR / "search"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("HUB_DATA_DIR", str(folder))
    os.environ.setdefault("SECRET_KEY", secrets.token_hex(32))
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")  # not used
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{folder / 'bench.sqlite3'}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def store_line(mib: int) -> str:
    """An ended instance whose stdout is a short line, one line of `mib` MiB, a short line."""
    from django.db import connection

    from sequences.models import Instance, StreamChunk

    iid = f"bench-search-{mib}-{secrets.token_hex(3)}"
    instance = Instance.objects.create(id=iid, sequence_name="bench", status="completed")
    filler = (b"abcdefghij" * (CHUNK // 10 + 1))[:CHUNK]
    count = mib * MIB // CHUNK
    batch: list[StreamChunk] = [
        StreamChunk(instance=instance, stream="stdout", seq=0, data=b"a short line\n")
    ]
    for seq in range(1, count + 1):
        batch.append(StreamChunk(instance=instance, stream="stdout", seq=seq, data=filler))
        if len(batch) >= 50:
            StreamChunk.objects.bulk_create(batch)
            batch = []
    batch.append(StreamChunk(instance=instance, stream="stdout", seq=count + 1, data=b"\nend\n"))
    StreamChunk.objects.bulk_create(batch)
    connection.close()
    return iid


def timed(fn: Callable[[], Any]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def three_at_once(search: Callable[[str, str, str], Any], iid: str) -> dict[str, float]:
    """Three searches on threads of their own; meanwhile a small query every 50 ms."""
    from django.db import connection

    from sequences.models import Instance

    latencies: list[float] = []
    done = threading.Event()

    def other_page() -> None:
        while not done.is_set():
            began = time.perf_counter()
            Instance.objects.filter(pk=iid).exists()
            latencies.append(time.perf_counter() - began)
            time.sleep(0.05)
        connection.close()

    def one() -> float:
        try:
            return timed(lambda: search(iid, "stdout", "absent"))
        finally:
            connection.close()

    probe = threading.Thread(target=other_page)
    probe.start()
    began = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        each = list(pool.map(lambda _: one(), range(3)))
    wall = time.perf_counter() - began
    done.set()
    probe.join()
    return {
        "wall_s": wall,
        "slowest_s": max(each),
        "other_query_max_s": max(latencies),
        "other_query_median_s": statistics.median(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,25,100", help="MiB, comma-separated")
    parser.add_argument("--baseline-max", type=int, default=25, help="largest MiB for the old")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    setup_django()
    from sequences.models import Instance

    made: list[str] = []
    rows: list[tuple[str, str]] = []
    results: dict[str, Any] = {"sizes": []}
    try:
        for mib in sizes:
            iid = store_line(mib)
            made.append(iid)
            found = new_search(iid, "stdout", "end")
            assert [f.number for f in found.found] == [3], "the new search lost a line"
            new = min(timed(lambda iid=iid: new_search(iid, "stdout", "absent")) for _ in range(3))
            old = None
            if mib <= args.baseline_max:
                assert [n for n, _ in old_search(iid, "stdout", "end")] == [3]
                old = timed(lambda iid=iid: old_search(iid, "stdout", "absent"))
            entry = {"mib": mib, "new_s": new, "old_s": old, "ratio": old / new if old else None}
            results["sizes"].append(entry)
            versus = f" | old {old:.2f} s | {old / new:.0f}x faster" if old else " | old: skipped"
            speed = f"new {new:.2f} s ({mib / new:.0f} MiB/s)"
            rows.append((f"{mib} MiB, one line", speed + versus))
        largest = made[-1]
        together = three_at_once(new_search, largest)
        results["three_at_once_new"] = {"mib": sizes[-1], **together}
        rows.append(
            (
                f"3 at once, {sizes[-1]} MiB, new",
                f"all done {together['wall_s']:.2f} s; other query max "
                f"{together['other_query_max_s'] * 1000:.0f} ms "
                f"(median {together['other_query_median_s'] * 1000:.1f} ms)",
            )
        )
        baseline_sizes = [m for m in sizes if m <= args.baseline_max]
        if baseline_sizes:
            mib = baseline_sizes[-1]
            old_together = three_at_once(old_search, made[sizes.index(mib)])
            new_together = three_at_once(new_search, made[sizes.index(mib)])
            results["three_at_once_same_size"] = {
                "mib": mib,
                "old": old_together,
                "new": new_together,
                "wall_ratio": old_together["wall_s"] / new_together["wall_s"],
            }
            rows.append(
                (
                    f"3 at once, {mib} MiB, old vs new",
                    f"old {old_together['wall_s']:.2f} s, other query max "
                    f"{old_together['other_query_max_s'] * 1000:.0f} ms | new "
                    f"{new_together['wall_s']:.2f} s, max "
                    f"{new_together['other_query_max_s'] * 1000:.0f} ms | "
                    f"{old_together['wall_s'] / new_together['wall_s']:.0f}x",
                )
            )
    finally:
        Instance.objects.filter(pk__in=made).delete()
    biggest = results["sizes"][-1]
    results["target_s"] = TARGET_SECONDS
    results["meets_target"] = biggest["mib"] < 100 or biggest["new_s"] <= TARGET_SECONDS
    print_table("Log search, a word the stream does not contain (whole stream read)", rows)
    print(json.dumps(results, indent=2))
    write_result("search", results)


if __name__ == "__main__":
    main()
