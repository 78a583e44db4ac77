"""Console log search: the same lines as a naive search, in one pass, bounded, a few at a time."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dashboard import search
from dashboard.processes import stop_process
from dashboard.search import Scanner
from tests.conftest import free_port, start_web

CHUNK = 64 * 1024  # what a worker stores at most per chunk (one pipe read)
BIG_CHUNKS = 1600  # 100 MiB


def naive(data: bytes, needle: str, context: int) -> list[tuple[int, str, bool, bool]]:
    """What the search must find: each line containing `needle` (case aside), with `context`
    characters either side of the first match."""
    out = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        text = raw.decode("utf-8", "replace")
        at = text.lower().find(needle.lower())
        if at >= 0:
            shown = text[max(0, at - context) : at + len(needle) + context]
            out.append((number, shown, at > context, len(text) - at > len(needle) + context))
    return out


def test_the_scanner_finds_what_a_naive_search_finds_however_the_stream_is_cut():
    rng = random.Random(16)
    for _ in range(4000):
        text = "".join(rng.choice("abAB\nxé") for _ in range(rng.randint(0, 300)))
        data = text.encode()
        needle = "".join(rng.choice("abAé") for _ in range(rng.randint(1, 4)))
        context = rng.randint(1, 12)
        scanner = Scanner(needle, limit=10**6, context=context)
        at = 0
        while at < len(data):  # cuts anywhere, inside a line, a match or a UTF-8 character
            step = rng.randint(1, 24)
            scanner.feed(data[at : at + step])
            at += step
        got = [(f.number, f.text, f.cut_before, f.cut_after) for f in scanner.finish()]
        assert got == naive(data, needle, context), (text, needle, context)


def test_a_line_of_a_hundred_megabytes_is_read_once():
    """The old search joined the line so far to every chunk: quadratic in the line's length."""
    chunk = (b"0123456789" * (CHUNK // 10 + 1))[:CHUNK]
    scanner = Scanner("needle")
    began = time.process_time()
    for i in range(BIG_CHUNKS):
        scanner.feed(chunk[:1000] + b"NEEDLE" + chunk[1006:] if i == 800 else chunk)
    found = scanner.finish()
    spent = time.process_time() - began
    assert [f.number for f in found] == [1]
    assert found[0].cut_before and found[0].cut_after
    assert len(found[0].text) <= 2 * search.CONTEXT + len("needle")
    assert "NEEDLE" in found[0].text
    assert spent < 5, f"{spent:.1f} s of CPU for 100 MiB"


def test_results_and_needles_are_bounded():
    scanner = Scanner("x", limit=3)
    scanner.feed(b"x\n" * 100)
    assert [f.number for f in scanner.finish()] == [1, 2, 3]
    for bad in ("", "a" * (search.MAX_NEEDLE + 1), "two\nlines"):
        with pytest.raises(search.BadNeedle):
            Scanner(bad)


# -- against the database and a real web process ---------------------------------------------


@pytest.fixture
def big_instance(transactional_db, sequence):
    """An ended instance whose stdout holds a short line, one line of 100 MiB (1 600 chunks,
    as a worker stores them), and another short line; 'needle' in each."""
    from django.utils import timezone

    from sequences.models import Instance, StreamChunk

    instance = Instance.objects.create(
        sequence=sequence,
        sequence_name=sequence.name,
        status="completed",
        exit_code=0,
        started=timezone.now(),
        ended=timezone.now(),
    )
    filler = (b"abcdefghij" * (CHUNK // 10 + 1))[:CHUNK]
    rows = [StreamChunk(instance=instance, stream="stdout", seq=0, data=b"first needle line\n")]
    for seq in range(1, BIG_CHUNKS + 1):
        data = filler
        if seq == BIG_CHUNKS // 2:
            data = filler[:5000] + b"<needle>" + filler[5008:]
        rows.append(StreamChunk(instance=instance, stream="stdout", seq=seq, data=data))
    rows.append(
        StreamChunk(instance=instance, stream="stdout", seq=BIG_CHUNKS + 1, data=b"\nlast needle\n")
    )
    StreamChunk.objects.bulk_create(rows, batch_size=50)
    return instance


def test_search_of_a_hundred_megabyte_stream_is_bounded(big_instance):
    """Straight on the database: the whole stream in a few seconds, the time limit holds."""
    result = search.search_stream(big_instance.id, "stdout", "NEEDLE", seconds=60)
    assert result.complete and result.scanned > 100 * 2**20
    assert [f.number for f in result.found] == [1, 2, 3]
    assert "<needle>" in result.found[1].text and len(result.found[1].text) < 4000
    print(f"100 MiB searched in {result.seconds:.2f} s")
    assert result.seconds < 10, f"{result.seconds:.1f} s"
    cut = search.search_stream(big_instance.id, "stdout", "absent", seconds=0)
    assert not cut.complete and cut.scanned < 100 * 2**20


def test_a_search_waits_briefly_for_a_slot_then_is_refused():
    slots, _pool = search._gate()
    held = 0
    while slots.acquire(blocking=False):
        held += 1
    try:
        began = time.monotonic()
        with pytest.raises(search.SearchBusy, match="HUB_SEARCH_CONCURRENCY"):
            asyncio.run(search.search("no-such-instance", "stdout", "needle"))
        assert search.QUEUE_SECONDS <= time.monotonic() - began < search.QUEUE_SECONDS + 2
    finally:
        for _ in range(held):
            slots.release()
    assert held >= 1


def test_three_searches_of_a_hundred_megabytes_leave_other_pages_fast(big_instance, tmp_path):
    web = start_web(tmp_path, free_port(), HUB_ANONYMOUS_ROLE="viewer")
    url = f"http://127.0.0.1:{web.port}"
    search_url = f"{url}/instances/{big_instance.id}/search/"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            began = time.monotonic()
            answer = client.get(search_url, params={"stream": "stdout", "q": "needle"})
            alone = time.monotonic() - began
            assert answer.status_code == 200
            assert "3 lines of stdout" in answer.text, answer.text[-2000:]
            assert len(answer.content) < 200_000  # excerpts, not the 100 MB line
            assert alone < 10, f"one search took {alone:.1f} s"

            page_times: list[float] = []
            done = threading.Event()

            def read_pages() -> None:
                while not done.is_set():
                    t0 = time.monotonic()
                    assert client.get("/instances/").status_code == 200
                    page_times.append(time.monotonic() - t0)
                    time.sleep(0.05)

            def one_search() -> tuple[int, str, float]:
                t0 = time.monotonic()
                with httpx.Client(timeout=60) as own:
                    r = own.get(search_url, params={"stream": "stdout", "q": "absent"})
                return r.status_code, r.text, time.monotonic() - t0

            reader = threading.Thread(target=read_pages)
            reader.start()
            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda _: one_search(), range(3)))
            done.set()
            reader.join()
    finally:
        stop_process(web.proc)
    print(
        f"alone {alone:.2f} s; three at once: {[(s, round(t, 2)) for s, _, t in answers]}; "
        f"other pages max {max(page_times):.2f} s over {len(page_times)}"
    )
    statuses = sorted(status for status, _, _ in answers)
    # Two run at once (HUB_SEARCH_CONCURRENCY), the third waits for a slot or is told to
    # come back.
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 429}, statuses
    for status, text, took in answers:
        assert took < 20, f"a search answered after {took:.1f} s"
        if status == 429:
            assert "HUB_SEARCH_CONCURRENCY" in text
        else:
            assert "0 lines of stdout" in text
    assert page_times and max(page_times) < 2.0, (
        f"other pages took up to {max(page_times):.2f} s while searches ran"
    )
