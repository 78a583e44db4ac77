"""Resource samples through a real worker: a running instance's CPU and memory show up in its
ring (sequences/resources.py) while it runs, and stay for a bounded time after it ends."""

from __future__ import annotations

import pytest
from django.conf import settings

from sequences import live, resources
from tests.conftest import wait_for
from tests.runner.test_instances_api import info, run_sequence, wait_ended

pytestmark = pytest.mark.django_db(transaction=True)

# Holds about 64 MiB and keeps one core busy until it is killed.
BUSY = """
import time
def run(context, input):
    hold = bytearray(64 << 20)
    for i in range(0, len(hold), 4096):
        hold[i] = 1
    print("holding", flush=True)
    n = 0
    while True:
        n += 1
        if n % 1_000_000 == 0:
            time.sleep(0)
"""


def test_a_running_instance_is_sampled_by_its_worker(admin_api):
    iid = run_sequence(admin_api, BUSY)
    wait_for(lambda: info(admin_api, iid)["status"] == "running", what="running")
    # Two samples: HUB_SAMPLE_SECONDS (5 s) apart, the first within one interval of the start.
    samples = wait_for(
        lambda: len(s := resources.read_samples(iid)) >= 2 and s,
        timeout=4 * settings.HUB_SAMPLE_SECONDS + 10,
        what="two resource samples",
    )
    last = samples[-1]
    assert last.rss > 60 << 20, samples  # the 64 MiB it holds
    assert samples[-1].at > samples[0].at
    # A busy loop uses CPU; on a shared test machine it may get far less than a core.
    assert max(s.cpu for s in samples) > 5.0, samples
    # The same figures the health check reports, from the same process.
    health = admin_api.get(f"/instance/{iid}/health").json()
    assert abs(health["memoryUsage"] - last.rss) < 32 << 20

    admin_api.post(f"/instance/{iid}/_kill", json={})
    wait_ended(admin_api, iid)
    key = resources.resources_key(iid)
    # Kept for HUB_RESOURCE_RETENTION after the end, then gone: never without an expiry.
    ttl = wait_for(
        lambda: 0 < (t := live.sync_client().ttl(key)) <= settings.HUB_RESOURCE_RETENTION and t,
        what="the samples to get their expiry",
    )
    assert ttl > 0
    assert len(resources.read_samples(iid)) >= 2
