"""sequences.packages: which packages are accepted, what is recorded, and safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import stat
import tarfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from sequences import packages
from sequences.packages import PackageError, PackageInfo, extract_package, inspect_package
from tests.sequences.badpackages import (
    CORPUS_LIMITS,
    END,
    MAIN_PY,
    BadPackage,
    _dir,
    _file,
    _gz,
    _hardlink,
    _header,
    _pax,
    _raw_base,
    _symlink,
    _tar,
    corpus,
    good_package,
    gzip_bomb,
    zeros_after_end,
)

MIB = 1 << 20
SMALL = {"max_files": 100, "max_bytes": 1 * MIB}
CORPUS = corpus()
BY_NAME = {entry.name: entry for entry in CORPUS}


def inspect(path: Path | Any, **limits: int) -> PackageInfo:
    return inspect_package(path, **{**CORPUS_LIMITS, **limits})


def refusal(path: Path, **limits: int) -> PackageError:
    with pytest.raises(PackageError) as caught:
        inspect(path, **limits)
    return caught.value


def write_tar_gz(tmp_path: Path, members: list[Any], name: str = "pkg.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(_gz(_tar(members)))
    return path


def _base_members() -> list[Any]:
    return [_file("package.json", json.dumps({"main": "main.py"})), _file("main.py", MAIN_PY)]


def tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# --------------------------------------------------------------------------------------------
# The corpus of bad packages


def test_corpus_has_at_least_45_uniquely_named_entries() -> None:
    assert len(CORPUS) >= 45
    assert len({entry.name for entry in CORPUS}) == len(CORPUS)
    assert all(entry.code.isupper() and entry.message_contains for entry in CORPUS)


def test_corpus_covers_every_upload_error_code() -> None:
    upload_codes = set(packages.ERROR_CODES) - {"CHECKSUM_MISMATCH"}
    assert {entry.code for entry in CORPUS} == upload_codes


@pytest.mark.parametrize("bad", CORPUS, ids=str)
def test_bad_package_is_refused_with_its_code_and_message(bad: BadPackage, tmp_path: Path) -> None:
    error = refusal(bad.write(tmp_path))
    assert error.code == bad.code, error.message
    assert bad.message_contains in error.message
    assert str(error) == error.message
    assert error.as_dict() == {"error": error.message, "code": bad.code}


def test_corpus_codes_hold_at_the_low_end_of_the_supported_limits(tmp_path: Path) -> None:
    low = {"max_files": 100, "max_bytes": 64 * MIB, "max_json_bytes": 64 * 1024}
    wrong = []
    for entry in CORPUS:
        try:
            inspect(entry.write(tmp_path), **low)
        except PackageError as error:
            if error.code != entry.code or entry.message_contains not in error.message:
                wrong.append((entry.name, error.code, error.message))
        else:
            wrong.append((entry.name, "accepted", ""))
    assert wrong == []


def test_hundred_thousand_files_entry_builds_in_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    path = BY_NAME["too_many_files"].write(tmp_path)
    assert time.monotonic() - started < 5
    assert path.stat().st_size < 4 * MIB


def test_too_many_files_is_refused_at_the_first_member_over_the_limit(tmp_path: Path) -> None:
    path = BY_NAME["too_many_files"].write(tmp_path)
    started = time.monotonic()
    error = refusal(path, max_files=50)
    assert time.monotonic() - started < 0.5
    assert error.message == "the package has more than 50 files and folders"


# --------------------------------------------------------------------------------------------
# Gzip bombs: refused while streaming, in bounded memory


def test_bomb_is_refused_from_its_header_without_decompressing(tmp_path: Path) -> None:
    bomb = gzip_bomb(tmp_path, 64 * MIB)
    tracemalloc.start()
    started = time.monotonic()
    try:
        error = refusal(bomb, max_bytes=1 * MIB)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert error.code == "TOO_LARGE"
    assert time.monotonic() - started < 0.5
    assert peak < 2 * MIB


def test_hidden_bomb_stops_reading_as_soon_as_the_count_passes_the_limit(tmp_path: Path) -> None:
    hidden = zeros_after_end(tmp_path, 600 * MIB)  # about 620 KB compressed

    class CountingFile(io.FileIO):
        consumed = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            CountingFile.consumed += len(data)
            return data

    with CountingFile(hidden) as handle:
        error = refusal(handle, max_bytes=1 * MIB)  # type: ignore[arg-type]
    assert error.code == "TOO_LARGE"
    assert error.message == "the package unpacks to more than 1 MiB"
    # 1 MiB plus the header allowance is about 2 MiB unpacked, a few KB of the file.
    assert CountingFile.consumed <= 2 * packages._READ_CHUNK


def test_hidden_bomb_keeps_memory_flat_while_it_streams_64_mib(tmp_path: Path) -> None:
    path = BY_NAME["zeros_after_end_marker"].write(tmp_path)
    tracemalloc.start()
    try:
        error = refusal(path, max_bytes=64 * MIB)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert error.code == "TOO_LARGE"
    assert peak < 4 * MIB


def test_pax_header_of_digits_is_parsed_in_linear_time(tmp_path: Path) -> None:
    # Python 3.11 < 3.11.10 backtracks quadratically on this (CVE-2024-6232).
    digits = b"1" * 500_000
    payload = (
        _header(b"PaxHeader", kind=b"x", size=len(digits)) + digits + bytes(-len(digits) % 512)
    )
    path = tmp_path / "redos.tar.gz"
    path.write_bytes(_gz(payload + _raw_base() + END))
    started = time.monotonic()
    assert refusal(path).code == "CORRUPT"
    assert time.monotonic() - started < 0.5


def test_empty_read_does_not_decompress_everything(tmp_path: Path) -> None:
    # zlib treats max_length=0 as "no limit"; a zero-length read must not reach it.
    with gzip_bomb(tmp_path, 64 * MIB).open("rb") as raw:
        reader = packages._GzipReader(raw, max_bytes=1 * MIB)
        assert reader.readinto(bytearray(0)) == 0
        assert reader.decompressed_size == 0


# --------------------------------------------------------------------------------------------
# Valid packages


def test_minimal_python_package_is_described(tmp_path: Path) -> None:
    config = {"name": "hello", "version": "1.2.3", "description": "says hi", "main": "main.py"}
    path = good_package(tmp_path, {"main.py": "print('hi')\n"}, config)
    info = inspect(path)
    raw = path.read_bytes()
    assert info.sha256 == hashlib.sha256(raw).hexdigest()
    assert info.size == len(raw)
    assert info.config == config
    assert (info.name, info.version, info.description) == ("hello", "1.2.3", "says hi")
    assert info.root == ""
    assert info.main == "main.py"
    assert info.language == "python"
    package_json_size = len(json.dumps(config, indent=2))
    assert info.files == [
        {"path": "main.py", "size": 12},
        {"path": "package.json", "size": package_json_size},
    ]
    assert info.unpacked_size == 12 + package_json_size


def test_missing_optional_fields_read_as_empty_strings(tmp_path: Path) -> None:
    info = inspect(good_package(tmp_path, {"main.py": ""}, {"main": "main.py"}))
    assert (info.name, info.version, info.description) == ("", "", "")


def test_single_top_folder_is_stripped_from_the_file_list(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x", "lib/util.py": "yy"}, root="hello-1.0")
    info = inspect(path)
    assert info.root == "hello-1.0"
    assert [entry["path"] for entry in info.files] == ["lib/util.py", "main.py", "package.json"]
    assert info.main == "main.py"


def test_dot_slash_names_and_main_are_normalised(tmp_path: Path) -> None:
    # What `tar -C dir -czf pkg.tar.gz .` produces.
    config = {"main": "./src/./main.py"}
    members = [
        _dir("."),
        _file("./package.json", json.dumps(config)),
        _dir("./src"),
        _file("./src/main.py", "x"),
    ]
    info = inspect(write_tar_gz(tmp_path, members))
    assert info.root == ""
    assert info.main == "src/main.py"
    assert [entry["path"] for entry in info.files] == ["package.json", "src/main.py"]


def test_nested_main_is_found(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"src/app/run.py": "x"}, {"main": "src/app/run.py"})
    assert inspect(path).main == "src/app/run.py"


@pytest.mark.parametrize(
    ("engines", "main", "language"),
    [
        ({}, "main.py", "python"),
        ({}, "index.js", "node"),
        ({}, "index.mjs", "node"),
        ({}, "index.cjs", "node"),
        ({"node": ">=18"}, "main.py", "node"),
        ({"python3": "3.11"}, "index.js", "python"),
        ({"python3": "3.11", "node": "20"}, "index.js", "python"),
        ({"node": "20"}, "index.ts", "node"),
    ],
)
def test_language_comes_from_engines_first_then_main(
    tmp_path: Path, engines: dict[str, str], main: str, language: str
) -> None:
    path = good_package(tmp_path, {main: "x"}, {"main": main, "engines": engines})
    assert inspect(path).language == language


def test_pypackages_folder_is_accepted_and_listed(tmp_path: Path) -> None:
    files = {
        "main.py": "import pyee\n",
        "__pypackages__/pyee/__init__.py": "x = 1\n",
        "__pypackages__/pyee-9.0.4.dist-info/METADATA": "Name: pyee\n",
    }
    info = inspect(good_package(tmp_path, files, {"main": "main.py"}))
    assert {"path": "__pypackages__/pyee/__init__.py", "size": 6} in info.files


def test_file_list_holds_files_and_hardlinks_sorted_but_no_folders_or_symlinks(
    tmp_path: Path,
) -> None:
    members = [
        _file("package.json", json.dumps({"main": "main.py"})),
        _file("main.py", "x"),
        _dir("z"),
        _file("b.txt", "bbb"),
        _symlink("a-link", "b.txt"),
        _hardlink("c-hard", "b.txt"),
    ]
    info = inspect(write_tar_gz(tmp_path, members))
    assert [entry["path"] for entry in info.files] == [
        "b.txt",
        "c-hard",
        "main.py",
        "package.json",
    ]
    assert {"path": "c-hard", "size": 3} in info.files
    assert info.unpacked_size == sum(entry["size"] for entry in info.files)


def test_main_may_be_a_hardlink(tmp_path: Path) -> None:
    # GNU tar stores whichever name of a hard-linked file it meets first as the file.
    members = [
        _file("package.json", json.dumps({"main": "index.js"})),
        _file("copy.js", "x"),
        _hardlink("index.js", "copy.js"),
    ]
    info = inspect(write_tar_gz(tmp_path, members))
    assert (info.main, info.language) == ("index.js", "node")


def test_hardlinks_cannot_multiply_the_unpacked_size(tmp_path: Path) -> None:
    links = [_hardlink(f"copy{i}.bin", "big.bin") for i in range(10)]
    members = [*_base_members(), _file("big.bin", bytes(200_000)), *links]
    error = refusal(write_tar_gz(tmp_path, members), max_bytes=1 * MIB)
    assert (error.code, error.message) == ("TOO_LARGE", "the files add up to more than 1 MiB")


def test_links_that_stay_inside_are_accepted(tmp_path: Path) -> None:
    members = [
        _file("package.json", json.dumps({"main": "index.js"})),
        _file("index.js", "x"),
        _file("node_modules/tool/cli.js", "x"),
        _symlink("node_modules/.bin/tool", "../tool/cli.js"),
        _symlink("node_modules/up", ".."),
        _symlink("here", "."),
        _hardlink("copy.js", "index.js"),
    ]
    assert inspect(write_tar_gz(tmp_path, members)).language == "node"


def test_unicode_names_and_byte_order_mark_are_accepted(tmp_path: Path) -> None:
    members = [
        _file("package.json", b"\xef\xbb\xbf" + json.dumps({"main": "données/é.py"}).encode()),
        _file("données/é.py", "x"),
    ]
    assert inspect(write_tar_gz(tmp_path, members)).main == "données/é.py"


def test_gnu_long_names_and_git_global_header_are_accepted(tmp_path: Path) -> None:
    long_main = "deep/" + "x" * 150 + ".py"
    tar = _tar(
        [_file("package.json", json.dumps({"main": long_main})), _file(long_main, "x")],
        fmt=tarfile.GNU_FORMAT,
    )
    path = tmp_path / "gnu.tar.gz"
    path.write_bytes(_gz(_pax([(b"comment", b"0123abcd")], kind=b"g") + tar))
    assert inspect(path).main == long_main


def test_concatenated_gzip_members_and_zero_padding_are_accepted(tmp_path: Path) -> None:
    tar = _tar([_file("package.json", json.dumps({"main": "main.py"})), _file("main.py", "x")])
    path = tmp_path / "multi.tar.gz"
    path.write_bytes(_gz(tar[:700]) + _gz(tar[700:]) + bytes(100))
    assert inspect(path).main == "main.py"


def test_tar_without_end_marker_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "no-end.tar.gz"
    path.write_bytes(_gz(_raw_base()))
    assert inspect(path).main == "main.py"


def test_package_json_elsewhere_does_not_matter(tmp_path: Path) -> None:
    big = json.dumps({"pad": "x" * (2 * MIB)})
    members = [
        _file("docs/package.json", big),  # first, while it could still be the package's own
        _file("package.json", json.dumps({"main": "main.py"})),
        _file("main.py", "x"),
        _file("node_modules/a/package.json", "not json"),
    ]
    assert inspect(write_tar_gz(tmp_path, members)).root == ""


def test_open_binary_file_is_accepted_as_source(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x"})
    with path.open("rb") as handle:
        assert inspect(handle).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Limits are exact


def test_max_files_counts_every_member(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x", "lib/a.py": "a"})  # lib/, 3 files
    assert inspect(path, max_files=4).main == "main.py"
    assert refusal(path, max_files=3).code == "TOO_MANY_FILES"


def test_max_bytes_counts_file_contents(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x" * 5000})
    total = inspect(path).unpacked_size
    assert inspect(path, max_bytes=total).unpacked_size == total
    error = refusal(path, max_bytes=total - 1)
    assert error.code == "TOO_LARGE"


def test_max_json_bytes_is_inclusive(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x"})
    size = len(json.dumps({"name": "demo", "version": "1.0.0", "main": "main.py"}, indent=2))
    assert inspect(path, max_json_bytes=size).main == "main.py"
    error = refusal(path, max_json_bytes=size - 1)
    assert error.code == "PACKAGE_JSON_TOO_LARGE"


def test_nonsense_limits_are_a_programming_error(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"main.py": "x"})
    with pytest.raises(ValueError):
        inspect_package(path, max_files=0, max_bytes=MIB)


def test_package_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(PackageError("UNSAFE_PATH", "member 'x' is bad")))
    assert (error.code, error.message) == ("UNSAFE_PATH", "member 'x' is bad")


# --------------------------------------------------------------------------------------------
# Extraction


def inspected(tmp_path: Path, files: dict[str, str | bytes], **kwargs: Any) -> tuple[Path, Any]:
    path = good_package(tmp_path, files, **kwargs)
    return path, inspect(path)


@pytest.fixture(params=[True, False], ids=["tarfile-filters", "by-hand"])
def filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Extraction with tarfile's data filter, and as on Pythons without it (before 3.11.4,
    Debian 12's 3.11.2): the same files, names, links and modes either way."""
    from sequences import packages

    if request.param and not packages.HAS_FILTERS:
        pytest.skip("this Python has no tarfile filters")  # the by-hand case still runs
    monkeypatch.setattr(packages, "HAS_FILTERS", request.param)
    return request.param


def test_extract_writes_the_package_without_its_top_folder(tmp_path: Path, filters) -> None:
    path, info = inspected(tmp_path, {"main.py": "print(1)\n", "lib/u.py": "u"}, root="pkg")
    dest = tmp_path / "cache" / info.sha256
    extract_package(path, dest, info)
    assert tree(dest) == {"package.json", "main.py", "lib", "lib/u.py"}
    assert (dest / "main.py").read_text() == "print(1)\n"
    assert tree(tmp_path / "cache") == {info.sha256, *(f"{info.sha256}/{p}" for p in tree(dest))}


def test_extract_keeps_links_inside_the_package(tmp_path: Path, filters) -> None:
    members = [
        _file("package.json", json.dumps({"main": "index.js"})),
        _file("index.js", "x"),
        _file("node_modules/tool/cli.js", "cli"),
        _symlink("node_modules/.bin/tool", "../tool/cli.js"),
        _hardlink("copy.js", "index.js"),
    ]
    path = write_tar_gz(tmp_path, members)
    dest = tmp_path / "out"
    extract_package(path, dest, inspect(path))
    link = dest / "node_modules/.bin/tool"
    assert link.is_symlink() and link.read_text() == "cli"
    assert Path(os.path.realpath(link)).is_relative_to(dest.resolve())
    assert os.stat(dest / "copy.js").st_ino == os.stat(dest / "index.js").st_ino


def test_extract_drops_group_and_other_write_bits(tmp_path: Path, filters) -> None:
    script = _file("run.py", "x")
    script[0].mode = 0o777
    setuid = _file("lib.py", "y")
    setuid[0].mode = 0o4044  # setuid, and not even readable by its owner
    members = [_file("package.json", json.dumps({"main": "run.py"})), script, setuid]
    path = write_tar_gz(tmp_path, members)
    dest = tmp_path / "out"
    extract_package(path, dest, inspect(path))
    assert stat.S_IMODE((dest / "run.py").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "lib.py").stat().st_mode) == 0o644
    assert (dest / "lib.py").stat().st_uid == os.geteuid()  # not the archive's owner


def test_extract_leaves_an_existing_destination_alone(tmp_path: Path) -> None:
    path, info = inspected(tmp_path, {"main.py": "x"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "marker").write_text("mine")
    extract_package(path, dest, info)
    assert tree(dest) == {"marker"}


def test_extract_refuses_a_file_that_is_not_the_inspected_one(tmp_path: Path) -> None:
    _, info = inspected(tmp_path, {"main.py": "x"})
    other = good_package(tmp_path, {"main.py": "y"})
    with pytest.raises(PackageError) as caught:
        extract_package(other, tmp_path / "out", info)
    assert caught.value.code == "CHECKSUM_MISMATCH"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name",
    [
        "dotdot_traversal",
        "absolute_path",
        "symlink_absolute",
        "symlink_relative_escape",
        "member_through_symlink",
        "hardlink_escape",
        "char_device",
        "fifo",
    ],
)
def test_extract_validates_again_and_writes_nothing_outside(tmp_path: Path, name: str) -> None:
    # Pretend inspection was skipped or fooled: extraction must still refuse on its own.
    entry = BY_NAME[name]
    incoming = tmp_path / "in"
    incoming.mkdir()
    path = entry.write(incoming)
    raw = path.read_bytes()
    info = PackageInfo(
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        unpacked_size=MIB,
        config={"main": "main.py"},
        root="",
    )
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PackageError) as caught:
        extract_package(path, work / "dest", info)
    assert caught.value.code == entry.code
    assert tree(work) == set()  # no destination, no staging folder, nothing beside them
    assert tree(tmp_path) == {"in", f"in/{path.name}", "work"}


def test_extract_removes_its_staging_folder_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, info = inspected(tmp_path, {"main.py": "x", "lib/a.py": "a"})
    work = tmp_path / "work"
    calls = []
    original = tarfile.TarFile.extract

    def failing_extract(self: tarfile.TarFile, *args: Any, **kwargs: Any) -> None:
        calls.append(args[0].name)
        if len(calls) == 2:
            raise OSError("disk full")
        original(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", failing_extract)
    with pytest.raises(OSError, match="disk full"):
        extract_package(path, work / "dest", info)
    assert tree(work) == set()


def test_extract_loses_a_race_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, info = inspected(tmp_path, {"main.py": "x"})
    dest = tmp_path / "work" / "dest"
    original = packages._extract_into

    def slow_extract(*args: Any) -> None:
        original(*args)
        dest.mkdir()  # another worker finished first
        (dest / "package.json").write_text("{}")
        (dest / "theirs").write_text("")

    monkeypatch.setattr(packages, "_extract_into", slow_extract)
    extract_package(path, dest, info)
    assert tree(tmp_path / "work") == {"dest", "dest/package.json", "dest/theirs"}


# --------------------------------------------------------------------------------------------
# good_package itself


def test_good_package_writes_distinct_files_with_folder_entries(tmp_path: Path) -> None:
    first = good_package(tmp_path, {"a/b/c.py": "x"})
    second = good_package(tmp_path, {"a/b/c.py": "x"})
    assert first != second
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert names == ["a", "a/b", "a/b/c.py", "main.py", "package.json"]
    with gzip.open(first) as handle:
        assert handle.read(1)
    assert inspect(first).files[-1]["path"] == "package.json"


def test_good_package_uses_a_given_package_json_file_verbatim(tmp_path: Path) -> None:
    path = good_package(tmp_path, {"package.json": '{"main": "run.js"}', "run.js": MAIN_PY})
    assert inspect(path).config == {"main": "run.js"}
