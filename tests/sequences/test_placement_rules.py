"""Placement without a hub: the start body's `placement`, workers' labels, the room a worker
publishes and how the web chooses among workers (the live tests are tests/runner/
test_placement.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from core.labels import worker_labels
from sequences import live
from sequences.errors import HubError
from sequences.instances import parse_start
from sequences.live import WorkerRoom
from sequences.placement import Placement, choose, misfit
from tests.conftest import ROOT


def start_body(placement: object) -> bytes:
    return json.dumps({"placement": placement}).encode()


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ("gpu", "placement must be a JSON object"),
        (["gpu"], "placement must be a JSON object"),
        ({"label": ["gpu"]}, "placement.label is not a placement field"),
        ({"labels": "gpu"}, "placement.labels must be an array"),
        ({"labels": ["gpu", 1]}, "placement.labels[1] must be a string"),
        ({"labels": ["zone a"]}, "placement.labels[0] 'zone a' is not a label"),
        ({"labels": ["a,b"]}, "placement.labels[0] 'a,b' is not a label"),
        ({"labels": [""]}, "placement.labels[0] '' is not a label"),
        ({"labels": ["x" * 129]}, "placement.labels[0]"),
        ({"labels": [f"l{i}" for i in range(33)]}, "placement.labels has 33 labels, at most 32"),
        ({"worker": 3}, "placement.worker must be a worker's name"),
        ({"worker": "w" * 201}, "placement.worker must be a worker's name"),
    ],
)
def test_a_malformed_placement_is_refused_naming_the_field(placement, message) -> None:
    with pytest.raises(HubError) as refused:
        parse_start(start_body(placement))
    assert (refused.value.status, refused.value.code) == (422, "INVALID_CONFIG")
    assert message in refused.value.message


def test_a_placement_is_parsed_and_kept_as_given() -> None:
    req = parse_start(start_body({"labels": ["gpu", "zone=a", "gpu"], "worker": "w1"}))
    assert req.placement == Placement(labels=("gpu", "zone=a"), worker="w1")
    assert req.placement.to_json() == {"labels": ["gpu", "zone=a"], "worker": "w1"}
    for empty in (None, {}, {"labels": [], "worker": None}):
        assert not parse_start(start_body(empty)).placement
    assert not parse_start(b"{}").placement


def test_worker_labels_come_from_the_setting() -> None:
    assert worker_labels(["gpu", " zone=a", "", "gpu", "os=linux/amd64"]) == [
        "gpu",
        "zone=a",
        "os=linux/amd64",
    ]
    with pytest.raises(ValueError, match="HUB_WORKER_LABELS: 'two words' is not a label"):
        worker_labels(["two words"])


def test_a_hub_process_with_a_malformed_label_does_not_start() -> None:
    """Settings refuse it, so no worker serves with labels no start can name."""
    env = {
        **os.environ,
        "HUB_WORKER_LABELS": "gpu,zone a",
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "HUB_WORKER_LABELS: 'zone a' is not a label" in done.stderr.decode()


def test_misfit_says_what_the_worker_lacks() -> None:
    wanted = Placement(labels=("gpu", "zone=a"))
    assert misfit(wanted, "w1", ["zone=a", "gpu", "big"]) is None
    assert misfit(wanted, "w1", ["zone=a"]) == "worker w1 does not have labels gpu"
    assert misfit(Placement(worker="w2"), "w1", ["gpu"]) == "the start is for worker w2, not w1"
    assert misfit(Placement(), "w1", []) is None
    # A worker's name changes when it restarts; its host's name may be given instead.
    assert misfit(Placement(worker="node7"), "node7-4121-9f3a2c", [], host="node7") is None


def test_room_entries_old_and_new_lapse_and_parse() -> None:
    now = time.time()
    entries = {
        b"new": live.room_value(3, now + 5, ["gpu"], 2048, host="node7").encode(),
        b"old": live.room_value(2, now + 5).encode(),
        b"gone": live.room_value(9, now - 1, [], 100).encode(),
        b"junk": b"three 12",
        b"junkjson": f"1 {now + 5} [1]".encode(),
    }
    assert live.live_rooms(entries, now) == [
        WorkerRoom("new", 3, ("gpu",), 2048, own_list=True, host="node7"),
        WorkerRoom("old", 2),
    ]
    assert live.live_room(entries, now) == {"new": 3, "old": 2}


def room(name: str, free: int, labels: tuple[str, ...] = (), memory: int = 4096) -> WorkerRoom:
    return WorkerRoom(name, free, labels, memory, own_list=True)


def test_the_worker_with_the_most_free_places_is_chosen() -> None:
    rooms = [room("a", 3), room("b", 7), room("c", 0)]
    assert choose(rooms, Placement(), "q").worker == "b"
    # The starts this web is offering count against a worker's published room.
    assert choose(rooms, Placement(), "q", placing={"b": 5}).worker == "a"
    # A worker that did not pop the start is passed over, unless none other is left.
    assert choose(rooms, Placement(), "q", skip={"b"}).worker == "a"
    assert choose([room("b", 7)], Placement(), "q", skip={"b"}).worker == "b"
    # Memory for the start's limit comes first.
    rooms = [room("a", 5, memory=300), room("b", 2, memory=4096)]
    assert choose(rooms, Placement(), "q", memory_mb=1024).worker == "b"
    assert choose(rooms, Placement(), "q").worker == "a"


def test_ties_are_broken_at_random_and_a_burst_spreads() -> None:
    rooms = [room("a", 10), room("b", 10)]
    assert {choose(rooms, Placement(), "q").worker for _ in range(200)} == {"a", "b"}
    placing: Counter[str] = Counter()
    for _ in range(8):
        placing[choose(rooms, Placement(), "q", placing=placing).worker] += 1
    assert placing == {"a": 4, "b": 4}


def test_placement_limits_the_choice_and_names_the_reason() -> None:
    rooms = [room("w1", 5, ("zone=a",)), room("w2", 1, ("gpu", "zone=b")), room("w3", 0, ("gpu",))]
    assert choose(rooms, Placement(labels=("gpu",)), "q").worker == "w2"
    assert choose(rooms, Placement(worker="w1"), "q").worker == "w1"
    refused = choose(rooms, Placement(labels=("tpu",)), "q").refusal
    assert refused == (
        "no live worker of queue q has labels tpu (live: w1 [zone=a], w2 [gpu, zone=b], w3 [gpu])"
    )
    assert "has name or host w9" in choose(rooms, Placement(worker="w9"), "q").refusal
    full = choose(rooms, Placement(labels=("gpu", "zone=b")), "q", skip=()).worker
    assert full == "w2"
    refused = choose(rooms, Placement(worker="w3"), "q").refusal
    assert refused.startswith("every worker of queue q that has name or host w3 is at its capacity")


def test_full_only_when_every_live_worker_is() -> None:
    assert choose([room("a", 0), room("b", 0)], Placement(), "q").refusal.startswith(
        "every worker of queue q is at its capacity (2 live"
    )
    assert choose([room("a", 0), room("b", 1)], Placement(), "q").worker == "b"


def test_without_room_data_or_own_lists_the_shared_list_is_used() -> None:
    assert choose([], Placement(), "q") == choose([], Placement(labels=("gpu",)), "q")
    assert not choose([], Placement(), "q").worker
    old = WorkerRoom("old", 4)  # publishes no labels: reads only the shared list
    assert choose([old, room("new", 0)], Placement(), "q").shared
    # ... and cannot check a placement, so a placed start is not given to it.
    assert choose([old], Placement(worker="old"), "q").refusal.startswith("no live worker")


def test_a_draining_worker_is_neither_room_nor_full() -> None:
    now = time.time()
    entries = {
        b"d": live.room_value(5, now + 5, ["gpu"], 2048, host="h", draining=True).encode(),
        b"up": live.room_value(0, now + 5, [], 2048).encode(),
    }
    rooms = live.live_rooms(entries, now)
    assert rooms[0] == WorkerRoom("d", 0, ("gpu",), 2048, own_list=True, host="h", draining=True)
    assert live.live_room(entries, now) == {"d": 0, "up": 0}
    assert live.live_room(entries, now, draining=False) == {"up": 0}
    # Only the full worker counts: the cluster is full.
    assert choose(rooms, Placement(), "q").refusal.startswith(
        "every worker of queue q is at its capacity (1 live"
    )
    # With only the draining worker left, a start waits for its replacement.
    assert choose(rooms[:1], Placement(), "q") == choose([], Placement(), "q")
    assert not choose(rooms[:1], Placement(labels=("gpu",)), "q").refusal
