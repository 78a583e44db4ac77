"""The hub as a cluster: workers on hosts of their own (network namespaces, see conftest.py),
one PostgreSQL, one Redis, packages in shared storage (a folder, or S3 on a local moto server).

Every item is checked through the web's API, as a client sees the cluster."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from tests.cluster.conftest import Cluster, needs_netns
from tests.conftest import wait_for
from tests.packaging import python_package, upload

# The cluster's processes write the test database all along: no flush between tests, one at
# the end of the module (tests/cluster/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.timeout(120)]

# Prints the address it reaches the cluster's gateway from (its host's, in a namespace), then
# counts, forever.
WHERE_AND_COUNT = """
import asyncio, socket
async def run(context, input, gateway='127.0.0.1'):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((gateway, 9))  # UDP: picks the route, sends nothing
    print("from", probe.getsockname()[0], flush=True)
    probe.close()
    n = 0
    while True:
        n += 1
        print("alive", n, flush=True)
        await asyncio.sleep(0.2)
"""

LIVE = {"initializing", "starting", "running", "stopping", "killing"}


def start(api: httpx.Client, seq: str, body: dict | None = None) -> httpx.Response:
    return api.post(f"/sequence/{seq}/start", json=body or {})


def started(bed: Cluster, seq: str) -> str:
    response = start(bed.api, seq, {"args": [bed.gateway]})
    assert response.status_code == 200, f"{response.text} ({bed.diagnosis()})"
    return response.json()["id"]


def info(api: httpx.Client, iid: str) -> dict:
    response = api.get(f"/instance/{iid}")
    assert response.status_code == 200, response.text
    return response.json()


def worker_of(api: httpx.Client, iid: str) -> str:
    return wait_for(lambda: info(api, iid)["worker"], what=f"the worker of {iid}")


def read_stdout(
    api: httpx.Client, iid: str, until: Callable[[str], bool], timeout: float = 15
) -> str:
    """The instance's stdout from the start, followed until `until` holds for what was read
    (or the stream ends)."""
    text = ""
    deadline = time.monotonic() + timeout
    with api.stream("GET", f"/instance/{iid}/stdout", timeout=timeout) as response:
        for piece in response.iter_text():
            text += piece
            if until(text):
                return text
            if time.monotonic() > deadline:
                break
    if until(text):
        return text
    raise AssertionError(f"{iid}'s stdout never showed what was awaited: {text[-300:]!r}")


def counted(text: str) -> int:
    found = re.findall(r"alive (\d+)\n", text)
    return int(found[-1]) if found else 0


def counts_past(api: httpx.Client, iid: str, n: int) -> int:
    """Follows the instance's stdout until it counted past `n`; the count reached."""
    return counted(read_stdout(api, iid, lambda text: counted(text) > n))


def printed_from(api: httpx.Client, iid: str) -> str:
    text = read_stdout(api, iid, lambda text: re.search(r"from (\S+)\n", text) is not None)
    found = re.search(r"from (\S+)\n", text)
    assert found is not None
    return found.group(1)


def wait_lost(bed: Cluster, ids: list[str], what: str) -> None:
    """Until the instances are `lost`: beat checks every 5 s (dashboard/settings.py) for
    workers silent for HUB_LOST_AFTER, so within both and a little slack."""
    try:
        wait_for(
            lambda: all(info(bed.api, i)["status"] == "lost" for i in ids),
            timeout=bed.lost_after + 5 + 3,
            interval=0.2,
            what=f"{what} to be lost",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc} ({bed.diagnosis()})") from None


def kill_all(api: httpx.Client, ids: list[str]) -> None:
    for iid in ids:
        api.post(f"/instance/{iid}/_kill", json={})


# -- 1: upload through the web, run on workers of different hosts ----------------------------


@pytest.mark.parametrize(
    "cluster", [{"storage": "folder"}, {"storage": "s3"}], indirect=True, ids=["folder", "s3"]
)
def test_instances_run_on_workers_of_different_hosts_from_shared_storage(cluster: Cluster):
    bed = cluster
    hosts = bed.add_hosts(2, HUB_WORKER_CAPACITY="1")
    seq = upload(bed.api, python_package(WHERE_AND_COUNT))
    sha = bed.api.get(f"/sequence/{seq}").json()["sha256"]
    # The package is in the shared storage, and nowhere else.
    if bed.storage == "s3":
        keys = [o["Key"] for o in bed.s3.list_objects_v2(Bucket=bed.bucket)["Contents"]]
        assert keys == [f"hub/packages/{sha}.tar.gz"]
    else:
        assert bed.storage_dir is not None
        assert (bed.storage_dir / "packages" / f"{sha}.tar.gz").is_file()
    assert not (bed.data / "web" / "storage").exists()  # the web keeps no copy of its own

    # One place on each host: two starts run one on each.
    ids = [started(bed, seq) for _ in hosts]
    by_host = {bed.host_of(worker_of(bed.api, iid)).name: iid for iid in ids}
    assert set(by_host) == {h.name for h in hosts}
    for host in hosts:
        iid = by_host[host.name]
        # Output read through the web; the child ran on its host (its own address there).
        assert printed_from(bed.api, iid) == host.address
        counts_past(bed.api, iid, 2)
        # Each host unpacked the package into its own cache, from the shared storage.
        assert (host.data_dir / "cache" / sha / "main.py").is_file()
    kill_all(bed.api, ids)

    # A package changed in storage after its upload is refused by the worker that fetches
    # it (no host has it cached yet), with the reason, and nothing is unpacked.
    other = upload(bed.api, python_package("def run(context, input):\n    return 'ok'\n"))
    other_sha = bed.api.get(f"/sequence/{other}").json()["sha256"]
    forged = python_package("def run(context, input):\n    return 'forged'\n")
    if bed.storage == "s3":
        bed.s3.put_object(Bucket=bed.bucket, Key=f"hub/packages/{other_sha}.tar.gz", Body=forged)
    else:
        assert bed.storage_dir is not None
        (bed.storage_dir / "packages" / f"{other_sha}.tar.gz").write_bytes(forged)
    wait_for(lambda: all(bed.free_places().get(h.worker_name) == 1 for h in hosts), what="room")
    response = start(bed.api, other)
    assert response.status_code == 400, response.text
    assert "does not match the sha256 recorded at upload" in response.json()["error"]
    for host in hosts:
        assert not (host.data_dir / "cache" / other_sha).exists()


# -- 2: placement by free places across hosts ------------------------------------------------


def test_starts_go_to_hosts_with_free_places_and_507_only_when_all_are_full(cluster: Cluster):
    bed = cluster
    hosts = bed.add_hosts(2, HUB_WORKER_CAPACITY="2")
    seq = upload(bed.api, python_package(WHERE_AND_COUNT))
    # Four places in the cluster: four starts, none refused, two on each host (a full host
    # leaves starts to the other).
    ids = [started(bed, seq) for _ in range(4)]
    placed = [bed.host_of(worker_of(bed.api, iid)).name for iid in ids]
    assert sorted(placed) == sorted(h.name for h in hosts for _ in range(2)), placed
    wait_for(lambda: set(bed.free_places().values()) == {0}, what="both hosts to say full")
    began = time.monotonic()
    response = start(bed.api, seq)
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "INSUFFICIENT_RESOURCES"
    assert time.monotonic() - began < 5
    # A place frees on one host: the next start goes there.
    for host in hosts:
        freed = ids[placed.index(host.name)]
        bed.api.post(f"/instance/{freed}/_kill", json={})
        wait_for(lambda h=host: bed.free_places().get(h.worker_name) == 1, what="a free place")
        again = started(bed, seq)
        assert bed.host_of(worker_of(bed.api, again)) is host
        ids.append(again)
    kill_all(bed.api, ids)


# -- 4: a host cut from the network, and back ---------------------------------------------------


def test_a_partitioned_host_is_lost_and_its_given_up_child_killed_when_it_is_back(
    cluster: Cluster,
):
    """A partition (docs/operations.md, "A worker's host is cut off"): the cut host's instance
    is lost; back on the network, its worker kills the child the hub gave up."""
    bed = cluster
    needs_netns(bed)
    cut, other = bed.add_hosts(2, HUB_WORKER_CAPACITY="1")
    seq = upload(bed.api, python_package(WHERE_AND_COUNT))
    ids = [started(bed, seq) for _ in range(2)]
    on = {bed.host_of(worker_of(bed.api, iid)).name: iid for iid in ids}
    away, kept = on[cut.name], on[other.name]
    written_before = counts_past(bed.api, away, 1)
    child = info(bed.api, away)["pid"]

    cut.partition()
    wait_lost(bed, [away], "the cut host's instance")
    assert info(bed.api, kept)["status"] == "running"
    # The cut host runs on, unaware: its worker and the child, still counting.
    assert cut.worker is not None and cut.worker.proc.poll() is None
    assert psutil.pid_exists(child)

    cut.heal()
    # Back on the network, the worker beats again...
    wait_for(lambda: cut.worker_name in bed.free_places(), timeout=20, what="its heartbeat back")
    time.sleep(2)
    # ...and the instance stays lost: the worker's late writes do not overwrite the outcome,
    # and a reader gets what was written before the cut, then the stream ends.
    data = info(bed.api, away)
    assert data["status"] == "lost", data
    assert "stopped answering" in data["terminated"]["reason"]
    with bed.api.stream("GET", f"/instance/{away}/stdout", timeout=10) as r:
        text = r.read().decode()
    assert f"alive {written_before}\n" in text
    assert info(bed.api, kept)["status"] == "running"
    # The worker learns at its next beat that the hub gave the instance up, and kills the
    # child, which held the host's only place: the place is free again.
    wait_for(lambda: not psutil.pid_exists(child), timeout=30, what="the given-up child killed")
    wait_for(lambda: bed.free_places().get(cut.worker_name) == 1, timeout=30, what="its place free")
    assert info(bed.api, away)["status"] == "lost"
    assert bed.api.post(f"/instance/{away}/_kill", json={}).status_code == 409
    kill_all(bed.api, [kept])


# -- 3: a host vanishes, and comes back -------------------------------------------------------


def test_a_killed_host_leaves_its_instances_lost_and_the_other_host_running(cluster: Cluster):
    bed = cluster
    doomed, survivor = bed.add_hosts(2, HUB_WORKER_CAPACITY="2")
    seq = upload(bed.api, python_package(WHERE_AND_COUNT))
    ids = [started(bed, seq) for _ in range(4)]
    on = {iid: bed.host_of(worker_of(bed.api, iid)) for iid in ids}
    lost = [iid for iid in ids if on[iid] is doomed]
    kept = [iid for iid in ids if on[iid] is survivor]
    assert len(lost) == 2 and len(kept) == 2
    before = {iid: counts_past(bed.api, iid, 1) for iid in ids}

    doomed.kill()
    killed_at = time.monotonic()
    wait_lost(bed, lost, "the killed host's instances")
    took = time.monotonic() - killed_at
    for iid in lost:
        data = info(bed.api, iid)
        assert "stopped answering" in data["terminated"]["reason"], data
        # A reader gets what was written before, then the stream ends (no follower hangs).
        with bed.api.stream("GET", f"/instance/{iid}/stdout", timeout=10) as r:
            text = r.read().decode()
        assert "alive 2" in text
    # The other host's instances went on all along, and still do.
    for iid in kept:
        assert info(bed.api, iid)["status"] == "running"
        counts_past(bed.api, iid, before[iid] + 10)  # two seconds more, at least
    # New starts go to the survivor, which has no place left: the cluster is full.
    wait_for(lambda: doomed.worker_name not in bed.free_places(), what="the dead host's room")
    assert start(bed.api, seq).status_code == 507
    print(f"lost {took:.1f} s after the kill (HUB_LOST_AFTER={bed.lost_after})")
    # The host comes back (a namespace made anew, the same data folder and cache): a new
    # worker, which takes the next start.
    gone = doomed.worker_name
    doomed.restart()
    assert doomed.worker_name != gone
    again = started(bed, seq)
    assert bed.host_of(worker_of(bed.api, again)) is doomed
    assert printed_from(bed.api, again) == doomed.address
    kill_all(bed.api, [*kept, again])
