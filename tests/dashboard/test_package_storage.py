"""Package storage settings (dashboard/package_storage.py): a folder or an S3 bucket, each
wrong setting named at start; `hub_init` checks the storage answers (against a real local S3
server, moto)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from dashboard.package_storage import (
    FOLDER_BACKEND,
    S3_BACKEND,
    StorageSettingError,
    check_reachable,
    package_storage,
)
from tests.conftest import ROOT, free_port, hub_env

DATA = Path("/srv/hub")
KEYS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


def test_a_folder_by_default_and_where_hub_storage_dir_says():
    assert package_storage({}, DATA) == {
        "BACKEND": FOLDER_BACKEND,
        "OPTIONS": {"location": "/srv/hub/storage"},
    }
    shared = package_storage({"HUB_STORAGE_DIR": "/mnt/packages"}, DATA)
    assert shared["OPTIONS"]["location"] == "/mnt/packages"


def test_a_bucket_with_its_endpoint_region_and_prefix():
    config = package_storage(
        {
            "HUB_S3_BUCKET": "hub-packages",
            "HUB_S3_ENDPOINT_URL": "https://minio.example.net:9000",
            "HUB_S3_REGION": "eu-west-1",
            "HUB_S3_PREFIX": "/hub/",
            **KEYS,
        },
        DATA,
    )
    assert config["BACKEND"] == S3_BACKEND
    options = config["OPTIONS"]
    assert options["bucket_name"] == "hub-packages"
    assert options["endpoint_url"] == "https://minio.example.net:9000"
    assert options["addressing_style"] == "path"
    assert options["region_name"] == "eu-west-1"
    assert options["location"] == "hub"
    assert options["default_acl"] is None and options["querystring_auth"] is False
    # Credentials are not copied into settings: boto3 reads them from the environment.
    assert "id" not in repr(options) and "secret" not in repr(options)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"HUB_STORAGE_DIR": "/mnt/p", "HUB_S3_BUCKET": "hub"},
            "HUB_STORAGE_DIR and HUB_S3_BUCKET",
        ),
        (
            {"HUB_S3_ENDPOINT_URL": "http://s3:9000"},
            "HUB_S3_ENDPOINT_URL set without HUB_S3_BUCKET",
        ),
        ({"HUB_S3_REGION": "x", "HUB_S3_PREFIX": "p"}, "HUB_S3_REGION, HUB_S3_PREFIX set without"),
        ({"HUB_STORAGE_DIR": "packages"}, "HUB_STORAGE_DIR must be an absolute path"),
        ({"HUB_S3_BUCKET": "Hub_Packages"}, "HUB_S3_BUCKET 'Hub_Packages' is not a bucket name"),
        ({"HUB_S3_BUCKET": "hub", "HUB_S3_ENDPOINT_URL": "minio:9000"}, "HUB_S3_ENDPOINT_URL"),
        ({"HUB_S3_BUCKET": "hub", "HUB_S3_ENDPOINT_URL": "ftp://m"}, "not an http:// or https://"),
        ({"HUB_S3_BUCKET": "hub", "HUB_S3_REGION": "EU West"}, "HUB_S3_REGION 'EU West'"),
        (
            {"HUB_S3_BUCKET": "hub", "AWS_ACCESS_KEY_ID": "id"},
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
        ),
        (
            {"HUB_S3_BUCKET": "hub", "AWS_SECRET_ACCESS_KEY": "s"},
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
        ),
    ],
)
def test_a_setting_that_cannot_work_is_named(env: dict[str, str], named: str):
    with pytest.raises(StorageSettingError, match=named.replace("(", r"\(")):
        package_storage(env, DATA)


def test_a_process_started_with_a_wrong_setting_stops_saying_which():
    env = hub_env(HUB_S3_ENDPOINT_URL="http://127.0.0.1:9000")
    code = "import django; django.setup()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "HUB_S3_ENDPOINT_URL set without HUB_S3_BUCKET" in done.stderr


@pytest.fixture
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _use_bucket(settings, monkeypatch, endpoint: str, bucket: str) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    default = package_storage(
        {"HUB_S3_BUCKET": bucket, "HUB_S3_ENDPOINT_URL": endpoint, **KEYS}, DATA
    )
    default["OPTIONS"]["region_name"] = "us-east-1"
    settings.STORAGES = {**settings.STORAGES, "default": default}  # resets default_storage


def test_hub_init_refuses_a_bucket_that_is_not_there(settings, monkeypatch, s3_server):
    _use_bucket(settings, monkeypatch, s3_server, "no-such-bucket")
    with pytest.raises(StorageSettingError, match=r"s3://no-such-bucket at .*does not exist"):
        check_reachable()
    with pytest.raises(CommandError, match="the bucket does not exist"):
        call_command("hub_init")


def test_a_bucket_that_answers_keeps_packages(settings, monkeypatch, s3_server):
    import boto3
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    boto3.client(
        "s3", endpoint_url=s3_server, region_name="us-east-1", **_boto_keys()
    ).create_bucket(Bucket="hub-packages")
    _use_bucket(settings, monkeypatch, s3_server, "hub-packages")
    check_reachable()
    name = default_storage.save("packages/abc.tar.gz", ContentFile(b"package"))
    with default_storage.open(name, "rb") as stored:
        assert stored.read() == b"package"


def test_a_folder_that_cannot_be_written_is_named(settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": package_storage({"HUB_STORAGE_DIR": str(blocker / "packages")}, DATA),
    }
    with pytest.raises(StorageSettingError, match="cannot be written"):
        check_reachable()


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": "secret"}
