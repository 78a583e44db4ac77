"""A worker's package cache (runner/packagecache.py): fetched from shared storage, checked
against the sha256 recorded at upload, unpacked once. The same on hosts of their own with S3 in
tests/cluster/test_cluster.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from runner import packagecache
from sequences.catalog import add_sequence
from sequences.packages import PackageError
from tests.packaging import python_package

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_cache(settings, tmp_path: Path) -> Path:
    """This node's data folder, so its cache, is a fresh one (the storage stays the suite's)."""
    settings.HUB_DATA_DIR = tmp_path
    # pytest's folder is closed to other users: the children's folders would move out of it.
    settings.HUB_CHILDREN_DIR = tmp_path
    (tmp_path / "tmp").mkdir()
    return tmp_path / "cache"


def _uploaded(code: str):
    with tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False) as spool:
        spool.write(python_package(code))
    return add_sequence(Path(spool.name), None)


def test_a_package_is_fetched_checked_and_unpacked_once(own_cache: Path):
    seq = _uploaded(f"def run(context, input):\n    return {own_cache.name!r}\n")
    folder = packagecache.ensure_unpacked(seq)
    assert folder == own_cache / seq.sha256
    assert (folder / "main.py").is_file()
    assert packagecache.ensure_unpacked(seq) == folder


def test_a_package_changed_in_storage_is_refused(own_cache: Path):
    seq = _uploaded(f"def run(context, input):\n    return {str(own_cache)!r}\n")
    default_storage.delete(seq.storage_name)
    default_storage.save(seq.storage_name, ContentFile(python_package("def run(c, i): 1\n")))
    with pytest.raises(PackageError) as refused:
        packagecache.ensure_unpacked(seq)
    assert refused.value.code == "CHECKSUM_MISMATCH"
    assert "does not match the sha256 recorded at upload" in refused.value.message
    assert not (own_cache / seq.sha256).exists()
    default_storage.delete(seq.storage_name)
