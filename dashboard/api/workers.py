"""Worker routes: list and describe the workers, and drain one (admin)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest

from accounts.access import audit
from core.db_threads import db_call
from dashboard.api.auth import ApiRequest, HubRouter, Role
from dashboard.api.bodies import DrainBody, json_body
from sequences import workers
from sequences.errors import HubError

router = HubRouter(tags=["workers"])
aaudit = sync_to_async(audit)


@router.get("/workers", auth=Role("viewer"), summary="List workers")
def list_workers(request: HttpRequest) -> list[dict[str, Any]]:
    return workers.list_json()


@router.get(
    "/worker/{name}",
    auth=Role("viewer"),
    summary="Describe a worker, with the instances and sequencers it runs",
)
def get_worker(request: HttpRequest, name: str) -> dict[str, Any]:
    return workers.detail_json(workers.get_worker(name))


@router.post(
    "/worker/{name}/drain",
    auth=Role("admin"),
    summary="Drain a worker: no more starts, its instances finish or stop at the deadline, "
    "then it exits",
    openapi_extra=json_body(DrainBody),
)
async def drain(request: ApiRequest, name: str) -> dict[str, Any]:
    user = request.auth
    deadline = None
    try:
        await db_call(workers.get_worker, name)  # an unknown worker is 404 before a bad body
        deadline = workers.parse_deadline(request.body)
        answer = await workers.drain(name, deadline)
    except HubError as exc:
        await aaudit(user, "worker.drain", name, outcome="refused", via="api", error=exc.message)
        raise
    await aaudit(user, "worker.drain", name, via="api", deadline=deadline)
    return answer
