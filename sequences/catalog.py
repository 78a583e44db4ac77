"""Sequences: take a package in, store it by sha256, describe it, overwrite it, delete it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, transaction

from sequences.errors import HubError, not_found
from sequences.models import LIVE_STATUSES, Instance, Sequence
from sequences.packages import PackageError, PackageInfo, inspect_package

CHUNK = 1 << 20


def _tmp_dir() -> Path:
    path = settings.HUB_DATA_DIR / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def spool_upload(chunks: Iterable[bytes], declared_length: int | None = None) -> Path:
    """Copy an upload to a private temp file, refusing it (413) past HUB_UPLOAD_MAX_BYTES."""
    limit = settings.HUB_UPLOAD_MAX_BYTES
    if declared_length is not None and declared_length > limit:
        raise HubError(413, "TOO_LARGE", f"upload of {declared_length} bytes is over {limit}")
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar.gz", dir=_tmp_dir())
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise HubError(413, "TOO_LARGE", f"upload is over {limit} bytes")
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def read_chunks(stream: Any) -> Iterable[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _inspect(path: Path) -> PackageInfo:
    try:
        return inspect_package(
            path,
            max_files=settings.HUB_PACKAGE_MAX_FILES,
            max_bytes=settings.HUB_PACKAGE_MAX_BYTES,
        )
    except PackageError as exc:
        raise HubError(422, exc.code, exc.message) from None


def _store_file(path: Path, sha256: str) -> None:
    name = f"packages/{sha256}.tar.gz"
    if default_storage.exists(name):
        return
    with path.open("rb") as fh:
        default_storage.save(name, File(fh))


def add_sequence(path: Path, user: Any, replaces: Sequence | None = None) -> Sequence:
    """Validate a spooled package and record it; the temp file is always removed."""
    try:
        info = _inspect(path)
        _store_file(path, info.sha256)
    finally:
        path.unlink(missing_ok=True)
    return Sequence.objects.create(
        name=str(info.config.get("name") or ""),
        version=str(info.config.get("version") or ""),
        description=str(info.config.get("description") or ""),
        config=info.config,
        language=info.language,
        main=info.main,
        sha256=info.sha256,
        size=info.size,
        unpacked_size=info.unpacked_size,
        files=info.files,
        root=info.root,
        uploaded_by=user if getattr(user, "is_authenticated", False) else None,
    )


def _by_id(ident: str) -> Sequence | None:
    """The sequence with that id. A raw query, models made by Django as for any other: every
    start looks its sequence up, and the ORM compiling `filter(pk=...)` took ~0.3 ms of the
    web's CPU, half a start's database work (bench/README.md, session 11)."""
    opts = Sequence._meta
    quote = connection.ops.quote_name
    rows = Sequence.objects.raw(
        f"SELECT * FROM {quote(opts.db_table)} WHERE {quote(opts.pk.column)} = %s", [ident]
    )
    return next(iter(rows), None)


def same_package(seq: Sequence) -> list[Sequence]:
    """Other stored sequences made from the very same package (same sha256), oldest first: an
    upload that repeats one is kept (STH gives every upload an id), and the uploader is told."""
    return list(Sequence.objects.filter(sha256=seq.sha256).exclude(pk=seq.pk).order_by("created"))


def get_sequence(ident: str) -> Sequence:
    """By id, or by name (the newest upload with that name), as STH HEAD allows."""
    seq = _by_id(ident)
    if seq is None:
        seq = Sequence.objects.filter(name=ident).order_by("-created").first()
    if seq is None:
        raise not_found("Sequence", ident)
    return seq


def live_instance_ids(seq: Sequence) -> list[str]:
    return list(seq.instances.filter(status__in=LIVE_STATUSES).values_list("id", flat=True))


def delete_sequence(seq: Sequence, force: bool, stop_instances: Any = None) -> None:
    """Refuse (409) while instances run unless forced; forced, kill them first."""
    live = live_instance_ids(seq)
    if live and not force:
        raise HubError(
            409,
            "SEQUENCE_IN_USE",
            f"Can't remove sequence in use: {len(live)} instance(s) running "
            "(send 'x-seq-kill-inst: true' or ?force=1 to kill them)",
        )
    if live and stop_instances is not None:
        stop_instances(live)
    sha = seq.sha256
    with transaction.atomic():
        seq.delete()
    if not Sequence.objects.filter(sha256=sha).exists():
        default_storage.delete(f"packages/{sha}.tar.gz")


def package_path(seq: Sequence) -> str:
    return seq.storage_name


def open_package(seq: Sequence) -> Any:
    return default_storage.open(seq.storage_name, "rb")


def copy_package_to(seq: Sequence, dest: Path) -> None:
    with open_package(seq) as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def describe(seq: Sequence, instance_ids: list[str] | None = None) -> dict[str, Any]:
    """STH's sequence shape (id, name, config, location, instances) plus the hub's fields."""
    if instance_ids is None:
        instance_ids = list(seq.instances.values_list("id", flat=True))
    return {
        "id": seq.id,
        "name": seq.name,
        "version": seq.version,
        "config": seq.config,
        "location": "hub",
        "language": seq.language,
        "sha256": seq.sha256,
        "size": seq.size,
        "created": seq.created.isoformat(),
        "instances": instance_ids,
    }


def list_described() -> list[dict[str, Any]]:
    """Every sequence as `describe` shows it, with the ids of its instances (two queries)."""
    ids: dict[str, list[str]] = {}
    for iid, sid in Instance.objects.filter(sequence__isnull=False).values_list("id", "sequence"):
        ids.setdefault(sid, []).append(iid)
    return [describe(s, ids.get(s.id, [])) for s in Sequence.objects.all()]
