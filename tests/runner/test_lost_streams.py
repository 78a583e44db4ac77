"""A lost instance keeps every chunk a reader could read: what its dead worker had put in Redis
but not yet in the database is written there when the instance is marked lost (the cluster test
bed's killed host showed the last lines gone)."""

from __future__ import annotations

import uuid

import pytest

from runner.tasks import mark_lost
from sequences import live
from sequences.models import Instance, InstanceStatus, StreamChunk

pytestmark = pytest.mark.django_db


def test_marking_lost_keeps_the_live_tail_the_database_lacks():
    worker = f"gone-{uuid.uuid4().hex[:6]}"
    instance = Instance.objects.create(status=InstanceStatus.RUNNING, worker=worker)
    key = live.stream_key(instance.id, "stdout")
    client = live.sync_client()
    # 150 chunks live (more than a page of the backwards read); the writer had stored 0..9.
    for seq in range(150):
        client.xadd(key, {"s": seq, "d": f"line {seq}\n"})
    StreamChunk.objects.bulk_create(
        StreamChunk(instance=instance, stream="stdout", seq=seq, data=f"line {seq}\n".encode())
        for seq in range(10)
    )
    try:
        assert mark_lost(worker, "test") == 1
        stored = list(
            StreamChunk.objects.filter(instance=instance, stream="stdout")
            .order_by("seq")
            .values_list("seq", "data")
        )
        assert [seq for seq, _ in stored] == list(range(150))
        assert bytes(stored[-1][1]) == b"line 149\n"
        assert Instance.objects.get(pk=instance.pk).status == InstanceStatus.LOST
    finally:
        client.delete(*live.instance_keys(instance.id))
