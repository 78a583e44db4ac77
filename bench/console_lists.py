"""Server time of the console's list pages with many instances in the database.

Fills the bench hub's database with `--instances` ended instances (a few running, some failed,
spread over 20 sequences, one a second apart), plus audit entries, then times GETs of the pages
an operator opens (logged in through a session cookie, over loopback: daphne, Django, the
query, the template): the overview, the instance list (first page, filtered by status, searched,
and a keyset page deep in the list), the audit log and the sequences list. Median of `--rounds`.

Baseline, same run: the same pages with `--baseline` instances in the database (growth is what
matters: a page that costs the same at 1 000 and 100 000 rows scales), and the login page (no
query at all: the floor of a request here). Target: under 150 ms each at 100 000 instances.

    python -m bench.console_lists [--instances 100000] [--baseline 1000] [--rounds 15]
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/benchdb python -m bench.console_lists
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import timedelta
from typing import Any

import httpx

from bench.common import median, print_table, running_hub, write_result

TARGET_S = 0.150
PAGES = [
    ("overview", "/"),
    ("instances", "/instances/"),
    ("instances, status=errored", "/instances/?status=errored"),
    ("instances, searched by name", "/instances/?q=seq-07"),
    ("instances, a deep page", None),  # a keyset page far down: filled in at run time
    ("audit log", "/audit/"),
    ("sequences", "/sequences/"),
    ("login page (floor)", "/login/"),
]


def fill(total: int, already: int) -> None:
    """Grow the database to `total` instances (and a tenth as many audit entries)."""
    from django.utils import timezone

    from accounts.models import AuditEntry
    from sequences.models import Instance, Sequence

    seqs = list(Sequence.objects.all())
    if not seqs:
        seqs = [
            Sequence.objects.create(
                name=f"seq-{n:02d}", version="1.0.0", sha256=f"{n:064x}", size=1, main="m.py"
            )
            for n in range(20)
        ]
    start = timezone.now() - timedelta(seconds=total)
    batch: list[Instance] = []
    for n in range(already, total):
        seq = seqs[n % len(seqs)]
        status = "errored" if n % 50 == 0 else "completed"
        if n >= total - 10:
            status = "running"
        batch.append(
            Instance(
                sequence=seq,
                sequence_name=seq.name,
                status=status,
                exit_code=0 if status == "completed" else (1 if status == "errored" else None),
                started=start + timedelta(seconds=n),
                ended=start + timedelta(seconds=n + 1) if status != "running" else None,
            )
        )
        if len(batch) >= 5000:
            _save(batch, start, already)
            batch = []
    if batch:
        _save(batch, start, already)
    AuditEntry.objects.bulk_create(
        AuditEntry(actor="bench", action="instance.start", target=f"i-{n}")
        for n in range(already // 10, total // 10)
    )


def _save(batch: list[Any], start: Any, already: int) -> None:
    from django.db.models import F

    from sequences.models import Instance

    made = Instance.objects.bulk_create(batch)
    # bulk_create stamps `created` now: give them the times they ran at, in one update.
    Instance.objects.filter(pk__in=[r.pk for r in made]).update(created=F("started"))


def deep_page(client: httpx.Client) -> str:
    """The URL of the 10th keyset page of the instance list (following `next` links)."""
    url = "/instances/"
    for _ in range(10):
        html = client.get(url).text
        found = re.search(r'href="(\?[^"]+)"[^>]*data-page="next"', html)
        if not found:
            break
        url = "/instances/" + found[1].replace("&amp;", "&")
    return url


def measure(client: httpx.Client, rounds: int) -> dict[str, float]:
    deep = deep_page(client)
    times: dict[str, float] = {}
    for name, path in PAGES:
        url = path or deep
        samples = []
        for _ in range(rounds):
            began = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
        times[name] = median(samples)
    return times


def time_trends(rounds: int) -> float:
    """The overview's trends queries (sequences/trends.py) worked out cold, in this process: the
    page serves the last result and works the next out in a thread, so this is not in the
    page's time, but it is what the database pays every 10 s while someone looks."""
    from sequences import trends

    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        trends.trends()
        samples.append(time.perf_counter() - began)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with running_hub("console_lists") as hub:  # on BENCH_DATABASE_URL when it is set
        cookies = {"sessionid": hub.session_cookie}
        with httpx.Client(base_url=hub.url, cookies=cookies, timeout=60) as client:
            fill(args.baseline, 0)
            small = measure(client, args.rounds)
            small_trends = time_trends(max(3, args.rounds // 5))
            began = time.monotonic()
            fill(args.instances, args.baseline)
            filled_s = time.monotonic() - began
            large = measure(client, args.rounds)
            large_trends = time_trends(max(3, args.rounds // 5))
        database = hub.env["DATABASE_URL"].split(":")[0]
    rows = [
        (
            name,
            f"{large[name] * 1000:7.1f} ms at {args.instances:,} | "
            f"{small[name] * 1000:6.1f} ms at {args.baseline:,} | ×{large[name] / small[name]:.2f}"
            + ("" if large[name] <= TARGET_S or name.startswith("login") else "  over target"),
        )
        for name, _ in PAGES
    ]
    rows.append(
        (
            "overview trends queries, cold (not in the page's time)",
            f"{large_trends * 1000:7.1f} ms at {args.instances:,} | "
            f"{small_trends * 1000:6.1f} ms at {args.baseline:,}",
        )
    )
    print_table(f"Console pages, server round trip (median of {args.rounds}), {database}", rows)
    write_result(
        "console_lists",
        {
            "database": database,
            "instances": args.instances,
            "baseline_instances": args.baseline,
            "fill_s": filled_s,
            "median_s": large,
            "baseline_median_s": small,
            "trends_cold_s": large_trends,
            "baseline_trends_cold_s": small_trends,
            "target_s": TARGET_S,
            "met": all(v <= TARGET_S for v in large.values()),
        },
    )


if __name__ == "__main__":
    main()
