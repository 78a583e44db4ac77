"""Where uploaded packages are kept: Django's `STORAGES["default"]` made from the hub's settings.

One of two, chosen by the environment and checked when settings are read, so a process with a
mistyped setting stops at start with the setting named rather than at the first upload:

- a folder, `HUB_STORAGE_DIR` (by default `HUB_DATA_DIR/storage`): a shared one (NFS, CephFS,
  a volume mounted on every node) when workers run on several machines;
- an S3-compatible bucket, `HUB_S3_BUCKET` (with `HUB_S3_ENDPOINT_URL`, `HUB_S3_REGION`,
  `HUB_S3_PREFIX`), through django-storages; credentials come the way boto3 finds them
  (`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, an instance role).

Either way every worker unpacks what it runs into its own cache (runner/packagecache.py), after
checking the archive against the sha256 the hub recorded at upload.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

FOLDER_BACKEND = "django.core.files.storage.FileSystemStorage"
S3_BACKEND = "storages.backends.s3.S3Storage"
S3_SETTINGS = ("HUB_S3_BUCKET", "HUB_S3_ENDPOINT_URL", "HUB_S3_REGION", "HUB_S3_PREFIX")
# S3's rules for a bucket name (the general-purpose ones; what other stores accept is wider).
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
REGION = re.compile(r"[a-z0-9][a-z0-9-]*")
# A worker reads a whole package before unpacking it: past this it spools to disk, not memory
# (django-storages' default, 0, keeps every download in memory, up to HUB_UPLOAD_MAX_BYTES).
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class StorageSettingError(ImproperlyConfigured):
    """A package storage setting that cannot work, named."""


def package_storage(env: Mapping[str, str], data_dir: Path) -> dict[str, Any]:
    """The `STORAGES["default"]` entry `env` describes, or StorageSettingError naming the
    setting that is wrong."""
    given = {name: env.get(name, "").strip() for name in (*S3_SETTINGS, "HUB_STORAGE_DIR")}
    if given["HUB_S3_BUCKET"]:
        if given["HUB_STORAGE_DIR"]:
            raise StorageSettingError(
                "HUB_STORAGE_DIR and HUB_S3_BUCKET are both set: packages go to one place; "
                "unset one of them."
            )
        return _s3(given, env)
    stray = [name for name in S3_SETTINGS[1:] if given[name]]
    if stray:
        raise StorageSettingError(
            f"{', '.join(stray)} set without HUB_S3_BUCKET: name the bucket, or unset "
            f"{'them' if len(stray) > 1 else 'it'}."
        )
    folder = given["HUB_STORAGE_DIR"]
    if folder and not Path(folder).is_absolute():
        raise StorageSettingError(
            f"HUB_STORAGE_DIR must be an absolute path (every node mounts the same folder), "
            f"not {folder!r}."
        )
    location = Path(folder) if folder else data_dir / "storage"
    return {"BACKEND": FOLDER_BACKEND, "OPTIONS": {"location": str(location)}}


def _s3(given: dict[str, str], env: Mapping[str, str]) -> dict[str, Any]:
    bucket = given["HUB_S3_BUCKET"]
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageSettingError(
            f"HUB_S3_BUCKET {bucket!r} is not a bucket name: 3 to 63 lowercase letters, digits, "
            "dots and hyphens, beginning and ending with a letter or digit."
        )
    options: dict[str, Any] = {
        "bucket_name": bucket,
        # Packages are private to the hub: no public ACL, no signed URLs handed out.
        "default_acl": None,
        "querystring_auth": False,
        "max_memory_size": SPOOL_IN_MEMORY,
    }
    endpoint = given["HUB_S3_ENDPOINT_URL"]
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise StorageSettingError(
                f"HUB_S3_ENDPOINT_URL {endpoint!r} is not an http:// or https:// URL with a host."
            )
        options["endpoint_url"] = endpoint
        # MinIO, Ceph, SeaweedFS and moto all answer path-style requests; bucket subdomains
        # need DNS set up for them.
        options["addressing_style"] = "path"
    region = given["HUB_S3_REGION"]
    if region:
        if not REGION.fullmatch(region):
            raise StorageSettingError(f"HUB_S3_REGION {region!r} is not a region name.")
        options["region_name"] = region
    prefix = given["HUB_S3_PREFIX"].strip("/")
    if prefix:
        options["location"] = prefix
    key_id = env.get("AWS_ACCESS_KEY_ID", "")
    secret = env.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(key_id) != bool(secret):
        have, missing = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if key_id
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise StorageSettingError(
            f"{have} is set but {missing} is not: the S3 package storage needs both "
            "(or neither, for boto3's other sources: AWS_PROFILE, an instance role)."
        )
    return {"BACKEND": S3_BACKEND, "OPTIONS": options}


def describe(storage: Mapping[str, Any]) -> str:
    """Where packages go, for messages: a folder, or s3://bucket/prefix at an endpoint."""
    options = storage.get("OPTIONS", {})
    if storage.get("BACKEND") == S3_BACKEND:
        where = f"s3://{options['bucket_name']}/{options.get('location', '')}".rstrip("/")
        endpoint = options.get("endpoint_url")
        return f"{where} at {endpoint}" if endpoint else where
    return str(options.get("location", ""))


def check_reachable() -> None:
    """Raise StorageSettingError when the configured storage cannot be used: the folder cannot
    be written, or the bucket does not answer (unreachable, missing, credentials refused).
    `hub_init` runs it, so a hub does not start taking uploads it cannot keep."""
    from django.conf import settings
    from django.core.files.storage import default_storage

    config = settings.STORAGES["default"]
    where = describe(config)
    if config["BACKEND"] != S3_BACKEND:
        folder = Path(config["OPTIONS"]["location"])
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = folder / f".hub-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageSettingError(
                f"The package storage folder {where} cannot be written: {exc.strerror or exc}"
            ) from None
        return
    import botocore.exceptions

    client = default_storage.connection.meta.client  # type: ignore[attr-defined]
    try:
        client.head_bucket(Bucket=config["OPTIONS"]["bucket_name"])
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        why = {
            "404": "the bucket does not exist (create it first)",
            "NoSuchBucket": "the bucket does not exist (create it first)",
            "403": "access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        }.get(code, str(exc))
        raise StorageSettingError(f"The package storage {where} cannot be used: {why}") from None
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise StorageSettingError(f"The package storage {where} cannot be used: {exc}") from None
