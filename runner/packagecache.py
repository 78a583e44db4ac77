"""Packages unpacked once per worker node, keyed by sha256, fetched through Django's storage.

A worker on another machine with no shared disk works: it copies the archive from the storage
backend (a shared folder or an S3 bucket: dashboard/package_storage.py) the first time it needs
it, checks it against the sha256 recorded at upload, and unpacks it into its own cache.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from django.conf import settings

from runner.places import cache_root
from sequences import catalog
from sequences.models import Sequence
from sequences.packages import PackageError, extract_package, inspect_package

_lock = threading.Lock()


def ensure_unpacked(seq: Sequence) -> Path:
    """The folder holding the unpacked package, unpacking it first if this node lacks it."""
    dest = cache_root() / seq.sha256
    if dest.is_dir():
        return dest
    with _lock:
        if dest.is_dir():
            return dest
        with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".fetch-") as tmp:
            archive = Path(tmp) / "package.tar.gz"
            catalog.copy_package_to(seq, archive)
            info = inspect_package(
                archive,
                max_files=settings.HUB_PACKAGE_MAX_FILES,
                max_bytes=settings.HUB_PACKAGE_MAX_BYTES,
            )
            # What storage handed back must be what was uploaded: a shared folder or bucket
            # is written by more than this hub, and a cache entry, once made, is trusted.
            if info.sha256 != seq.sha256:
                raise PackageError(
                    "CHECKSUM_MISMATCH",
                    f"the package {seq.storage_name} in storage does not match the sha256 "
                    f"recorded at upload ({seq.sha256[:12]}…, storage has {info.sha256[:12]}…)",
                )
            extract_package(archive, dest, info)
    return dest


def forget(sha256: str) -> None:
    shutil.rmtree(cache_root() / sha256, ignore_errors=True)
