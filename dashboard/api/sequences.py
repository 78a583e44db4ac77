"""Sequence routes: upload (raw tar.gz), list, describe, overwrite, delete."""

from typing import Any

from django.http import HttpRequest

from accounts.access import audit
from dashboard.api.auth import ApiRequest, HubRouter, Role
from sequences import catalog, instances

router = HubRouter(tags=["sequences"])

TARBALL_BODY = {
    "requestBody": {
        "required": True,
        "description": "The package: a tar.gz with package.json at its root (or in one folder).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _declared_length(request: HttpRequest) -> int | None:
    value = request.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _upload(request: ApiRequest, replaces: Any = None) -> dict[str, Any]:
    user = request.auth
    path = catalog.spool_upload(catalog.read_chunks(request), _declared_length(request))
    try:
        seq = catalog.add_sequence(path, user, replaces=replaces)
    except Exception as exc:
        audit(user, "sequence.upload", outcome="refused", via="api", error=str(exc))
        raise
    audit(user, "sequence.upload", seq.id, via="api", name=seq.name, sha256=seq.sha256)
    answer: dict[str, Any] = {"id": seq.id}
    same = catalog.same_package(seq)
    if same:
        # Beyond STH's answer (its clients read only "id"): the sequences this repeats.
        answer["duplicateOf"] = [other.id for other in same]
    return answer


@router.post(
    "/sequence", auth=Role("admin"), summary="Upload a package", openapi_extra=TARBALL_BODY
)
def upload(request: ApiRequest) -> dict[str, Any]:
    return _upload(request)


@router.get("/sequences", auth=Role("viewer"), summary="List sequences")
def list_sequences(request: HttpRequest) -> list[dict[str, Any]]:
    return catalog.list_described()


@router.get("/sequence/{seq_id}", auth=Role("viewer"), summary="Describe a sequence")
def get_sequence(request: HttpRequest, seq_id: str) -> dict[str, Any]:
    seq = catalog.get_sequence(seq_id)
    data = catalog.describe(seq)
    data["files"] = seq.files
    data["description"] = seq.description
    return data


@router.get(
    "/sequence/{seq_id}/instances", auth=Role("viewer"), summary="Instance ids of a sequence"
)
def sequence_instances(request: HttpRequest, seq_id: str) -> list[str]:
    seq = catalog.get_sequence(seq_id)
    return list(seq.instances.values_list("id", flat=True))


@router.put(
    "/sequence/{seq_id}",
    auth=Role("admin"),
    summary="Overwrite: upload a new version",
    openapi_extra=TARBALL_BODY,
)
def overwrite(request: ApiRequest, seq_id: str) -> dict[str, Any]:
    old = catalog.get_sequence(seq_id)
    return _upload(request, replaces=old)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@router.delete(
    "/sequence/{seq_id}",
    auth=Role("admin"),
    summary="Delete a sequence (409 while instances run)",
)
def delete(request: ApiRequest, seq_id: str) -> dict[str, Any]:
    user = request.auth
    seq = catalog.get_sequence(seq_id)
    force = _truthy(request.headers.get("x-seq-kill-inst")) or _truthy(request.GET.get("force"))
    try:
        catalog.delete_sequence(seq, force, stop_instances=instances.kill_and_wait)
    except Exception as exc:
        audit(user, "sequence.delete", seq_id, outcome="refused", via="api", error=str(exc))
        raise
    audit(user, "sequence.delete", seq_id, via="api", force=force)
    return {"id": seq_id}
