"""The HUB_MAX_INSTANCES check reuses a live count younger than a second far from the limit
(counting every live row at every start grew with what runs), and counts afresh near it."""

from __future__ import annotations

import pytest

from sequences import instances
from sequences.models import Instance, InstanceStatus

pytestmark = pytest.mark.django_db


def test_far_from_the_limit_a_recent_count_is_reused(settings, django_assert_num_queries):
    settings.HUB_MAX_INSTANCES = 1000
    instances._live_count[:] = [-10.0, 0]
    Instance.objects.bulk_create(Instance(status=InstanceStatus.RUNNING) for _ in range(5))
    with django_assert_num_queries(1):
        assert instances._live_count_for_limit() == 5
    with django_assert_num_queries(0):
        # the start it was counted for, then this one
        assert instances._live_count_for_limit() == 6
        assert instances._live_count_for_limit() == 7


def test_near_the_limit_every_start_counts(settings, django_assert_num_queries):
    settings.HUB_MAX_INSTANCES = 6
    instances._live_count[:] = [-10.0, 0]
    Instance.objects.bulk_create(Instance(status=InstanceStatus.RUNNING) for _ in range(5))
    with django_assert_num_queries(2):
        assert instances._live_count_for_limit() == 5
        assert instances._live_count_for_limit() == 5  # 5 + 1 is past 90 % of 6: counted
