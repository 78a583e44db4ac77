"""Decide whether an uploaded sequence package is acceptable, and unpack accepted ones safely.

A package is a gzip-compressed tar archive holding ``package.json`` and code, either at the
archive root or inside one top folder. This module is the only place that judges packages: the
upload API, the web form and the workers all call it, so they all refuse the same things with
the same error codes.

Pure standard library on purpose: the web process validates uploads without touching user code,
and the workers use the very same parser to extract, so the two can never disagree about what an
archive contains.

Design notes (the "why"):

* The archive is read once, as a stream, through a gzip decoder that counts every decompressed
  byte and stops as soon as the count passes the limit. A gzip bomb is refused after reading at
  most ``max_bytes`` (plus a small allowance for tar headers), never decompressed whole, and
  memory stays bounded by a few buffers whatever the input.
* ``tarfile`` does the tar parsing, so inspection and extraction share one parser. A small
  ``TarInfo`` subclass closes the holes ``tarfile`` leaves for hostile input: unbounded GNU
  long names and pax headers, pax parsing regexes that backtrack quadratically on Python
  3.11 < 3.11.10 (CVE-2024-6232), sparse files, and corrupt headers mid-archive, which
  ``tarfile`` would silently treat as the end of the archive.
* Links are accepted only when they provably stay inside the package (see ``_Scanner``), and
  extraction adds ``tarfile``'s ``data`` filter as a second line of defence.
"""

from __future__ import annotations

import copy as copy_module
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self, cast

__all__ = [
    "DEFAULT_MAX_JSON_BYTES",
    "ERROR_CODES",
    "MAX_PATH_BYTES",
    "PackageError",
    "PackageInfo",
    "extract_package",
    "inspect_package",
    "publish_folder",
    "readable_by_all",
    "resolve_main",
]

KIB = 1024
MIB = 1024 * KIB

DEFAULT_MAX_JSON_BYTES = 1 * MIB
# Longest accepted member path (after removing "./"), in UTF-8 bytes. Far above what real
# packages use, low enough that file lists stay small and every file system can hold them.
MAX_PATH_BYTES = 1024
# Longest path component: NAME_MAX on Linux and most file systems.
MAX_NAME_BYTES = 255
# Deepest accepted path; bounds the per-member work and the folder bookkeeping.
MAX_DEPTH = 64
# pax and GNU long-name headers are read into memory whole; legitimate ones are tiny.
MAX_EXTENDED_HEADER_BYTES = 1 * MIB
# A member may be preceded by a few extended headers (GNU long name + long link + pax ...).
MAX_EXTENDED_HEADER_CHAIN = 8
# Legitimate pax headers hold a handful of records (path, times, a few xattrs).
MAX_PAX_RECORDS = 1024
# Decompressed bytes allowed beyond max_bytes: tar headers, padding and the end-of-archive
# marker are not file content, so they get a fixed allowance plus a little per member.
STREAM_ALLOWANCE = 1 * MIB
STREAM_ALLOWANCE_PER_MEMBER = 4 * KIB

_READ_CHUNK = 64 * KIB
_TAR_BUFSIZE = 64 * KIB
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper only: zlib checks the header, CRC and length
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_NODE_SUFFIXES = (".js", ".mjs", ".cjs")
# How `main` names a file (docs/javascript.md, docs/python.md; client/pack.py applies the same
# rule to a folder, and tests/client/test_pack.py runs both on the same packages). Node's
# require(): the path, then the path with each suffix, then, for a folder, the "main" of its
# own package.json and that folder's index. Node's require() tries .js and .json; .mjs and .cjs
# come after, for an ES module named without its extension (Node itself would not find it).
# Python: the path, then the path + ".py"; a folder is not a module file.
MAIN_SUFFIXES = {"node": ("", ".js", ".json", ".mjs", ".cjs"), "python": ("", ".py")}
# A nested package.json names its folder's main in this many characters at most.
_MAX_NESTED_MAIN = 1024

# The guards below override TarInfo hooks that CPython documents as override points in its
# source ("_proc_member() ... can be overridden in a subclass"). Fail loudly at import, rather
# than silently losing the guards, if a future Python renames them.
for _hook in ("fromtarfile", "_proc_member", "_proc_builtin", "_apply_pax_info", "_block"):
    if not hasattr(tarfile.TarInfo, _hook):  # pragma: no cover - depends on the Python version
        raise ImportError(f"tarfile.TarInfo.{_hook} is missing; sequences.packages needs it")


# Every PackageError.code, with what it means (for API documentation).
ERROR_CODES: dict[str, str] = {
    "NOT_GZIP": "the file is not gzip-compressed (empty, plain tar, zip, other data)",
    "NOT_TAR": "the gzip data is not a tar archive",
    "TRUNCATED": "the gzip stream or the tar data ends early",
    "CORRUPT": "bad gzip data or CRC, bad tar header, data after the gzip stream",
    "NO_PACKAGE_JSON": "no package.json at the root or in a single top folder",
    "PACKAGE_JSON_TOO_LARGE": "package.json is larger than the limit",
    "INVALID_JSON": "package.json is not UTF-8, not JSON, not an object, or not storable",
    "INVALID_FIELD": "name, version, description, engines or args has the wrong type",
    "INVALID_MAIN": "main is missing, not a string, empty, absolute, uses '..', or not a file",
    "MAIN_NOT_FOUND": "main names a file that is not in the package",
    "UNKNOWN_LANGUAGE": "neither engines nor main's extension says python or node",
    "UNSAFE_PATH": "a member name is absolute, uses '..', has control characters or a "
    "backslash, is not UTF-8, or is too long or too deep",
    "UNSAFE_LINK": "a symlink or hardlink could point outside the package, or a member "
    "goes through a symlink",
    "UNSAFE_MEMBER": "a device, FIFO, sparse file, unknown member type, or hostile tar headers",
    "DUPLICATE_MEMBER": "the same path appears twice",
    "PATH_CONFLICT": "a path is used both as a file and as a folder",
    "TOO_MANY_FILES": "more members than max_files",
    "TOO_LARGE": "the files, or the decompressed stream, exceed max_bytes",
    "CHECKSUM_MISMATCH": "extraction: the file is not the one that was inspected",
}


class PackageError(Exception):
    """A package was refused. ``code`` is stable for clients; ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[PackageError], tuple[str, str]]:
        # Exceptions travel between processes (Celery results); keep both fields.
        return (type(self), (self.code, self.message))

    def as_dict(self) -> dict[str, str]:
        """The body of the HTTP 422 answer."""
        return {"error": self.message, "code": self.code}


@dataclass
class PackageInfo:
    """What the hub records about an accepted package."""

    sha256: str
    size: int
    unpacked_size: int
    config: dict[str, Any]
    files: list[dict[str, Any]] = field(default_factory=list)
    root: str = ""
    language: str = ""
    main: str = ""

    @property
    def name(self) -> str:
        return _optional_str(self.config, "name")

    @property
    def version(self) -> str:
        return _optional_str(self.config, "version")

    @property
    def description(self) -> str:
        return _optional_str(self.config, "description")


def _optional_str(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else ""


# --------------------------------------------------------------------------------------------
# Public API


def inspect_package(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    max_files: int,
    max_bytes: int,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
) -> PackageInfo:
    """Validate a package without extracting it and describe it, or raise ``PackageError``.

    ``path`` may also be a binary file object, read from its current position.
    ``max_files`` bounds the number of tar members (files, folders and links), ``max_bytes``
    the total size of the files and, with a small allowance for tar headers, the number of
    decompressed bytes read. ``max_json_bytes`` bounds ``package.json``.
    """
    if max_files < 1 or max_bytes < 0 or max_json_bytes < 2:
        raise ValueError("limits must be positive")
    scanner = _Scanner(max_files=max_files, max_bytes=max_bytes, max_json_bytes=max_json_bytes)
    with _open_archive(path, max_bytes) as (tar, reader):
        for member in _members(tar, reader):
            scanner.add(member, tar)
        reader.drain()
    root = scanner.resolve_root()
    scanner.check_links(root)
    where = f"{root}/package.json" if root else "package.json"
    config = _parse_config(scanner.config_bytes(root), where)
    _check_fields(config, where)
    main, language = _check_main(config, where, root, scanner)
    return PackageInfo(
        sha256=reader.sha256,
        size=reader.compressed_size,
        unpacked_size=scanner.unpacked,
        config=config,
        files=scanner.file_list(root),
        root=root,
        language=language,
        main=main,
    )


def extract_package(
    path: str | os.PathLike[str], dest: str | os.PathLike[str], info: PackageInfo
) -> None:
    """Unpack an inspected package into ``dest``, which must not exist yet.

    The top folder ``info.root`` is stripped, so ``dest`` holds ``package.json`` directly. The
    archive is unpacked into a temporary sibling folder that is renamed to ``dest`` only once
    complete, so nobody ever sees a half-extracted package. If ``dest`` already exists (another
    worker won the race, or a cached copy), nothing is done. The archive is checked against
    ``info.sha256`` and validated again member by member while extracting; ``tarfile``'s
    ``data`` filter is a second line of defence.
    """
    dest = Path(dest)
    if dest.exists():
        return
    # Cheap up-front check, so a swapped or corrupted file is refused before anything is
    # written; the streaming pass below checks the hash again for the bytes it actually read.
    if _sha256_of(path) != info.sha256:
        raise PackageError("CHECKSUM_MISMATCH", "the package file does not match its sha256")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; the package folder is an ordinary one
        _extract_into(path, staging, info)
        readable_by_all(staging)
        publish_folder(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Reading: a counting gzip decoder feeding tarfile


class _GzipReader(io.RawIOBase):
    """Decompress a gzip file incrementally, hashing its bytes and counting the output.

    ``tarfile``'s own gzip support cannot stop at a byte limit, so we decompress ourselves:
    each ``readinto`` produces at most the requested number of bytes (``max_length``), and the
    running total is checked against the limit before the bytes are handed on.
    """

    def __init__(self, raw: BinaryIO, max_bytes: int) -> None:
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self.compressed_size = 0
        self.decompressed_size = 0
        self.max_bytes = max_bytes
        self.allowance = STREAM_ALLOWANCE
        self.head = b""  # the first decompressed bytes, to explain "not a tar archive"
        self._decoder = zlib.decompressobj(_GZIP_WBITS)
        self._pending = self._first_chunk()
        self._finished = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not view:
            return 0  # zlib reads max_length=0 as "no limit": never ask it for that
        while not self._finished:
            if self._decoder.eof:
                self._next_gzip_member()
                continue
            if not self._pending:
                self._pending = self._read_raw()
                if not self._pending:
                    raise PackageError(
                        "TRUNCATED", "the gzip stream ends early: the file is truncated"
                    )
            out = self._decompress(len(view))
            if out:
                view[: len(out)] = out
                return len(out)
        return 0

    def drain(self) -> None:
        """Read to the end, so the whole file is hashed and its gzip CRC checked.

        Bytes after the tar end-of-archive marker are ignored by tar tools, but they still count
        against the limit, so a bomb cannot hide there.
        """
        sink = bytearray(_READ_CHUNK)
        while self.readinto(sink):
            pass

    def _first_chunk(self) -> bytes:
        chunk = self._read_raw()
        if not chunk.startswith(_GZIP_MAGIC):
            raise PackageError("NOT_GZIP", _describe_not_gzip(chunk))
        return chunk

    def _read_raw(self) -> bytes:
        chunk = self._raw.read(_READ_CHUNK)
        self._hash.update(chunk)
        self.compressed_size += len(chunk)
        # gzip never makes data much bigger, so a file far larger than its unpacked limit is
        # refused without reading it all (e.g. endless padding after the gzip stream).
        if self.compressed_size > self.max_bytes + self.allowance + STREAM_ALLOWANCE:
            raise PackageError("TOO_LARGE", f"the package is larger than {_human(self.max_bytes)}")
        return chunk

    def _decompress(self, size: int) -> bytes:
        try:
            out = self._decoder.decompress(self._pending, size)
        except zlib.error as exc:
            raise PackageError(
                "CORRUPT", f"the gzip data is corrupt ({_zlib_reason(exc)})"
            ) from None
        self._pending = (
            self._decoder.unused_data if self._decoder.eof else self._decoder.unconsumed_tail
        )
        self.decompressed_size += len(out)
        if self.decompressed_size > self.max_bytes + self.allowance:
            raise PackageError(
                "TOO_LARGE", f"the package unpacks to more than {_human(self.max_bytes)}"
            )
        if len(self.head) < 512:
            self.head += out[: 512 - len(self.head)]
        return out

    def _next_gzip_member(self) -> None:
        # A gzip file may hold several concatenated members (gzip -c a b); zero padding after
        # the last one is tolerated as gzip(1) does, anything else is refused.
        while len(self._pending) < len(_GZIP_MAGIC):
            more = self._read_raw()
            if not more:
                break
            self._pending += more
        if self._pending.startswith(_GZIP_MAGIC):
            self._decoder = zlib.decompressobj(_GZIP_WBITS)
            return
        while self._pending:
            if self._pending.strip(b"\0"):
                raise PackageError("CORRUPT", "unexpected data after the end of the gzip stream")
            self._pending = self._read_raw()
        self._finished = True


def _describe_not_gzip(head: bytes) -> str:
    if not head:
        return "the file is empty, not a gzip-compressed tar archive"
    if head[257:262] == b"ustar":
        return "the file is a tar archive but is not gzip-compressed; send a .tar.gz"
    for magic, kind in (
        (b"PK\x03\x04", "a zip archive"),
        (b"BZh", "bzip2-compressed"),
        (b"\xfd7zXZ\x00", "xz-compressed"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    ):
        if head.startswith(magic):
            return f"the file is {kind}, not a gzip-compressed tar archive"
    return "the file is not gzip-compressed (it does not start with the gzip signature)"


def _describe_not_tar(head: bytes) -> str:
    if not head:
        return "the gzip data is empty, not a tar archive"
    if head.startswith(_GZIP_MAGIC):
        return "the gzip data is not a tar archive (it is gzip-compressed twice)"
    return "the gzip data is not a tar archive"


def _zlib_reason(exc: zlib.error) -> str:
    # "Error -3 while decompressing data: invalid block type" -> "invalid block type"
    return str(exc).rpartition(": ")[2] or "invalid data"


class _GuardedTarInfo(tarfile.TarInfo):
    """``TarInfo`` that refuses hostile headers before ``tarfile`` acts on them.

    The ``archive`` parameters are the ``TarFile`` being read (CPython names them "tarfile").
    It hooks tarfile's private methods and exceptions, which typeshed does not describe: the
    ``type: ignore`` comments below are those, and the tests run against CPython's tarfile.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        position = archive.fileobj.tell()
        try:
            return super().fromtarfile(archive)
        except tarfile.TruncatedHeaderError:  # type: ignore[attr-defined]  # private tarfile API
            if position == 0:
                raise  # tarfile reports "not a tar archive"
            raise PackageError(
                "TRUNCATED", "the tar data ends in the middle of a member header"
            ) from None
        except tarfile.InvalidHeaderError as exc:  # type: ignore[attr-defined]
            if position == 0:
                raise
            # tarfile would treat a bad header mid-archive as the end and drop the rest.
            raise PackageError(
                "CORRUPT", f"the tar data is corrupt at byte {position} ({exc})"
            ) from None

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse_error(self.name)
        if self.type not in _EXTENDED_TYPES:
            return super()._proc_member(archive)  # type: ignore[misc]  # private tarfile API
        if not 0 <= self.size <= MAX_EXTENDED_HEADER_BYTES:
            raise PackageError(
                "UNSAFE_MEMBER",
                f"an extended tar header of {_human(self.size)} is larger than "
                f"{_human(MAX_EXTENDED_HEADER_BYTES)}",
            )
        depth = getattr(archive, "_sh_header_depth", 0)
        if depth >= MAX_EXTENDED_HEADER_CHAIN:
            raise PackageError(
                "UNSAFE_MEMBER",
                f"more than {MAX_EXTENDED_HEADER_CHAIN} extended tar headers in a row",
            )
        archive._sh_header_depth = depth + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(archive)  # type: ignore[misc]  # private tarfile API
        finally:
            archive._sh_header_depth = depth  # type: ignore[attr-defined]

    def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """Linear-time replacement for ``TarInfo._proc_pax``, whose regexes backtrack."""
        position = archive.fileobj.tell()
        buf = archive.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
        if len(buf) < self.size:
            raise PackageError("TRUNCATED", "the tar data ends in the middle of a pax header")
        records = _parse_pax_records(buf[: self.size], position)
        del buf
        is_global = self.type == tarfile.XGLTYPE
        if is_global:
            # Global headers accumulate for the whole archive: bound their total too.
            total = getattr(archive, "_sh_global_bytes", 0) + self.size
            if total > MAX_EXTENDED_HEADER_BYTES:
                raise PackageError(
                    "UNSAFE_MEMBER",
                    f"global pax headers add up to more than {_human(MAX_EXTENDED_HEADER_BYTES)}",
                )
            archive._sh_global_bytes = total  # type: ignore[attr-defined]
        # A dict when reading (typeshed says Mapping, for what a writer may pass).
        headers = cast("dict[str, str]", archive.pax_headers)
        pax_headers = headers if is_global else headers.copy()
        for raw_key, raw_value in records:
            key = raw_key.decode("utf-8", "surrogateescape")
            if key.startswith("GNU.sparse."):
                raise _sparse_error(None)
            if is_global and key in ("path", "linkpath", "size"):
                # A global header renaming or resizing every later member is a trick, not a
                # package; tar tools do not even agree on what it means.
                raise PackageError(
                    "UNSAFE_MEMBER", f"a global pax header sets '{key}' for every member"
                )
            # Same decoding as tarfile with encoding utf-8 / errors surrogateescape: invalid
            # UTF-8 survives as surrogates, which the name checks then refuse clearly.
            pax_headers[key] = raw_value.decode("utf-8", "surrogateescape")
        try:
            following = self.fromtarfile(archive)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]
        if self.type in _PAX_TYPES:
            following._apply_pax_info(  # type: ignore[attr-defined]
                pax_headers, archive.encoding, archive.errors
            )
            following.offset = self.offset
            if "size" in pax_headers:
                # The size decides where the next header starts (as in tarfile).
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += following._block(following.size)  # type: ignore[attr-defined]
                archive.offset = offset
        return following


def _sparse_error(name: str | None) -> PackageError:
    what = f"member {_show(name)} is" if name else "a member is"
    return PackageError("UNSAFE_MEMBER", f"{what} a sparse file, which packages may not contain")


def _parse_pax_records(buf: bytes, position: int) -> list[tuple[bytes, bytes]]:
    """Split a pax header into (keyword, value) records: "<length> <keyword>=<value>\\n"."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(buf) and buf[pos] != 0:
        space = buf.find(b" ", pos, pos + 21)
        digits = buf[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        end = pos + length - 1  # index of the record's newline
        if length < 5 or end >= len(buf) or buf[end] != 0x0A:
            raise PackageError("CORRUPT", f"the pax header at byte {position} is malformed")
        keyword, equals, value = buf[space + 1 : end].partition(b"=")
        if not keyword or not equals:
            raise PackageError("CORRUPT", f"the pax header at byte {position} is malformed")
        records.append((keyword, value))
        if len(records) > MAX_PAX_RECORDS:
            raise PackageError(
                "UNSAFE_MEMBER",
                f"the pax header at byte {position} has over {MAX_PAX_RECORDS} records",
            )
        pos += length
    return records


@contextmanager
def _open_archive(
    source: str | os.PathLike[str] | BinaryIO, max_bytes: int
) -> Iterator[tuple[tarfile.TarFile, _GzipReader]]:
    with _open_source(source) as raw:
        reader = _GzipReader(raw, max_bytes)
        try:
            # Not a `with`: only opening may mean "not a tar"; the `with tar` below closes it.
            tar = tarfile.open(  # noqa: SIM115
                fileobj=reader,
                mode="r|",
                tarinfo=_GuardedTarInfo,
                encoding="utf-8",
                errors="surrogateescape",
                bufsize=_TAR_BUFSIZE,
            )
        except tarfile.TarError:
            raise PackageError("NOT_TAR", _describe_not_tar(reader.head)) from None
        tar.errorlevel = 2  # raise on every extraction problem, never just log it
        with tar:
            yield tar, reader


@contextmanager
def _open_source(source: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield source


def _members(tar: tarfile.TarFile, reader: _GzipReader) -> Iterator[tarfile.TarInfo]:
    """Yield the members in order, turning tarfile's errors into package errors."""
    previous: str | None = None
    while True:
        try:
            member = tar.next()
        except tarfile.ReadError as exc:
            raise _tar_read_error(exc, previous) from None
        except tarfile.TarError as exc:
            raise PackageError("CORRUPT", f"the tar data is corrupt ({exc})") from None
        if member is None:
            return
        # Stream mode keeps every TarInfo in tar.members; we never look back, so drop them and
        # keep memory flat however many members there are.
        tar.members.clear()  # type: ignore[attr-defined]  # private tarfile API
        reader.allowance += STREAM_ALLOWANCE_PER_MEMBER
        yield member
        previous = member.name


def _tar_read_error(exc: tarfile.ReadError, previous: str | None) -> PackageError:
    if "unexpected end of data" in str(exc):
        if previous is None:
            return PackageError("TRUNCATED", "the tar data ends early")
        return PackageError(
            "TRUNCATED", f"member {_show(previous)} is truncated: the archive ends inside its data"
        )
    return PackageError("CORRUPT", f"the tar data is corrupt ({exc})")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:  # pragma: no cover - only regular files are read
        return b""
    try:
        return handle.read()
    except tarfile.ReadError:
        raise PackageError(
            "TRUNCATED",
            f"member {_show(member.name)} is truncated: the archive ends inside its data",
        ) from None


# --------------------------------------------------------------------------------------------
# Member checks


_FILE = "file"
_FOLDER = "folder"
_SYMLINK = "symlink"
_HARDLINK = "hardlink"


class _Scanner:
    """Check members one by one as they stream past, remembering only what later checks need.

    Link policy: symlinks and hardlinks are accepted when they provably stay inside the package
    (node_modules/.bin is full of symlinks), refused otherwise. A symlink target must be
    relative, and ``..`` may only appear as leading components, no more of them than the link's
    folder depth below the package root; no member may live under a symlink. Together these
    make every link resolve inside the package without looking at the file system: a path can
    only climb with leading ``..`` from a real folder, never through another link. A hardlink
    must point to a file that appears earlier in the archive (as tar writes them); it then
    counts as a file (listed, sized, and may be ``main``).
    """

    def __init__(
        self,
        *,
        max_files: int,
        max_bytes: int,
        max_json_bytes: int,
        read_json: bool = True,
        root: str | None = None,
    ) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes
        self.read_json = read_json
        # Known when extracting: links are then checked before they are written. On upload the
        # root is only known at the end of the archive, so they are checked then.
        self.root = root
        self.count = 0
        self.unpacked = 0
        self.kinds: dict[str, str] = {}  # normalised path -> kind, for every explicit member
        self.sizes: dict[str, int] = {}  # regular files only
        # Every folder implied by a member path. Digests rather than strings: a hostile archive
        # of deep unique paths would otherwise store depth x length bytes per member.
        self.folders: set[bytes] = set()
        # The same, and the symlinks, folded for case and Unicode normalisation: on a
        # case-insensitive file system (a worker on macOS or Windows) "lib/x" goes through a
        # symlink named "LIB".
        self.folded_folders: set[bytes] = set()
        self.folded_links: set[str] = set()
        self.symlinks: list[tuple[str, str, int]] = []  # (path, target, leading '..' count)
        self.tops: list[str] = []  # the first two distinct top-level names
        self.json_texts: dict[str, bytes] = {}  # package.json candidates that were read
        self.json_sizes: dict[str, int] = {}
        self.json_folders: list[str] = []  # top folders holding a package.json
        self.deeper_json: str | None = None
        # The "main" of every nested package.json (path -> main), for a `main` that is a folder.
        self.nested_mains: dict[str, str] = {}

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> str:
        """Check one member; return its normalised path ("" for the archive root "./")."""
        self.count += 1
        if self.count > self.max_files:
            raise PackageError(
                "TOO_MANY_FILES", f"the package has more than {self.max_files} files and folders"
            )
        path = _member_path(member.name)
        kind = _member_kind(member, path)
        if not path:
            if kind != _FOLDER:
                raise PackageError("UNSAFE_PATH", "a member has an empty name")
            return path
        self._check_place(path, kind)
        self._note_top(path)
        if kind == _FILE:
            self._add_file(member, path, tar)
        elif kind == _SYMLINK:
            target, ups = _symlink_target(path, member.linkname)
            if self.root is None:
                self.symlinks.append((path, target, ups))
            else:
                _check_symlink_depth(path, target, ups, self.root)
        elif kind == _HARDLINK:
            self._check_hardlink(path, member.linkname)
        self.kinds[path] = kind
        return path

    def _check_place(self, path: str, kind: str) -> None:
        if path in self.kinds:
            raise PackageError(
                "DUPLICATE_MEMBER", f"member {_show(path)} appears twice in the archive"
            )
        parts = path.split("/")
        folded = _fold(path).split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            folded_folder = "/".join(folded[:depth])
            above = self.kinds.get(folder)
            if above == _SYMLINK or folded_folder in self.folded_links:
                raise PackageError(
                    "UNSAFE_LINK", f"member {_show(path)} goes through the symlink {_show(folder)}"
                )
            if above in (_FILE, _HARDLINK):
                raise PackageError(
                    "PATH_CONFLICT",
                    f"member {_show(path)} is inside {_show(folder)}, which is a file",
                )
            self.folders.add(_digest(folder))
            self.folded_folders.add(_digest(folded_folder))
        inside = f"member {_show(path)} is a {kind} but other members are inside it"
        if kind == _SYMLINK:
            if _digest("/".join(folded)) in self.folded_folders:
                raise PackageError("UNSAFE_LINK", inside)
            self.folded_links.add("/".join(folded))
        elif kind != _FOLDER and _digest(path) in self.folders:
            raise PackageError("PATH_CONFLICT", inside)

    def _note_top(self, path: str) -> None:
        top = path.split("/", 1)[0]
        if top not in self.tops and len(self.tops) < 2:
            self.tops.append(top)
            if len(self.tops) == 2:
                # No single top folder any more: only a root package.json can count.
                for name in [name for name in self.json_texts if name != "package.json"]:
                    del self.json_texts[name]

    def _add_file(self, member: tarfile.TarInfo, path: str, tar: tarfile.TarFile) -> None:
        self._count_size(path, member.size)
        if path.rsplit("/", 1)[-1] == "package.json":
            self._add_json_candidate(member, path, tar)

    def _count_size(self, path: str, size: int) -> None:
        if size > self.max_bytes:
            raise PackageError(
                "TOO_LARGE",
                f"member {_show(path)} is {_human(size)}, over the {_human(self.max_bytes)} limit",
            )
        self.unpacked += size
        if self.unpacked > self.max_bytes:
            raise PackageError(
                "TOO_LARGE", f"the files add up to more than {_human(self.max_bytes)}"
            )
        self.sizes[path] = size

    def _add_json_candidate(self, member: tarfile.TarInfo, path: str, tar: tarfile.TarFile) -> None:
        depth = path.count("/")
        # A stream is read once: the text serves as the root candidate and as a nested one.
        text = self._read_small_json(member, path, tar)
        if depth and text is not None and "node_modules" not in path.split("/"):
            # Not under node_modules: thousands of them there, and never the package's main.
            self._note_nested_main(path, text)
        if depth > 1:
            self.deeper_json = self.deeper_json or path
            return
        if depth == 1:
            if len(self.json_folders) < 3:  # enough to name them in a message
                self.json_folders.append(path.split("/", 1)[0])
            if len(self.tops) > 1:
                return  # cannot be the package's root any more
        self.json_sizes[path] = member.size
        if member.size > self.max_json_bytes and depth == 0:
            # Surely the package's own: refuse now rather than read on.
            raise _json_too_large(path, member.size, self.max_json_bytes)
        if text is not None:
            self.json_texts[path] = text

    def _read_small_json(
        self, member: tarfile.TarInfo, path: str, tar: tarfile.TarFile
    ) -> bytes | None:
        if not self.read_json or member.size > self.max_json_bytes:
            return None
        if path.count("/") > 1 and "node_modules" in path.split("/"):
            return None
        return _read_member(tar, member)

    def _note_nested_main(self, path: str, text: bytes) -> None:
        try:
            main = json.loads(text).get("main")
        except (ValueError, AttributeError, RecursionError):
            return  # Node skips a package.json it cannot use, and so does the rule here
        if isinstance(main, str) and len(main) <= _MAX_NESTED_MAIN:
            self.nested_mains[path] = main

    def _check_hardlink(self, path: str, linkname: str) -> None:
        try:
            target = _member_path(linkname)
        except PackageError:
            raise PackageError(
                "UNSAFE_LINK",
                f"hardlink {_show(path)} points to {_show(linkname)}, outside the package",
            ) from None
        if self.kinds.get(target) not in (_FILE, _HARDLINK):
            raise PackageError(
                "UNSAFE_LINK",
                f"hardlink {_show(path)} points to {_show(linkname)}, "
                "which is not an earlier file in the package",
            )
        # Which name of a hard-linked file tar stores as the file and which as the link depends
        # on directory order, so a hardlink counts as a file: listed, and its size counted (a
        # copy of the tree would take that room, so links cannot multiply a package's size).
        self._count_size(path, self.sizes[target])

    # -- end of archive ---------------------------------------------------------------------

    def resolve_root(self) -> str:
        """The top folder to strip ("" if package.json is at the archive root)."""
        if "package.json" in self.kinds:
            self._require_file("package.json")
            return ""
        if len(self.tops) == 1 and f"{self.tops[0]}/package.json" in self.kinds:
            self._require_file(f"{self.tops[0]}/package.json")
            return self.tops[0]
        raise PackageError("NO_PACKAGE_JSON", self._missing_json_message())

    def _require_file(self, path: str) -> None:
        kind = self.kinds[path]
        if kind != _FILE:
            raise PackageError("NO_PACKAGE_JSON", f"{path} is a {kind}, not a regular file")

    def _missing_json_message(self) -> str:
        if not self.kinds:
            return "the archive is empty: there is no package.json"
        if len(self.json_folders) > 1:
            found = ", ".join(_show(folder + "/") for folder in self.json_folders[:3])
            return (
                "package.json must be at the root or in a single top folder; "
                f"found several top folders with one ({found})"
            )
        if self.json_folders:
            return (
                f"{_show(self.json_folders[0] + '/package.json')} is not the package root: "
                "other files are outside that folder"
            )
        if self.deeper_json:
            return (
                "no package.json at the root or in a single top folder "
                f"(found {_show(self.deeper_json)}, which is nested too deep)"
            )
        return "no package.json at the root or in a single top folder"

    def check_links(self, root: str) -> None:
        for path, target, ups in self.symlinks:
            _check_symlink_depth(path, target, ups, root)

    def config_bytes(self, root: str) -> bytes:
        path = f"{root}/package.json" if root else "package.json"
        size = self.json_sizes[path]
        if size > self.max_json_bytes:
            raise _json_too_large(path, size, self.max_json_bytes)
        return self.json_texts.get(path, b"")

    def file_list(self, root: str) -> list[dict[str, Any]]:
        cut = len(root) + 1 if root else 0
        return [{"path": path[cut:], "size": size} for path, size in sorted(self.sizes.items())]

    def kind_of(self, path: str) -> str | None:
        if path in self.kinds:
            return self.kinds[path]
        return _FOLDER if _digest(path) in self.folders else None


def _check_symlink_depth(path: str, target: str, ups: int, root: str) -> None:
    """Refuse a symlink whose leading '..' climb above the package root."""
    folder_depth = path.count("/") - (1 if root else 0)
    if ups > folder_depth:
        raise PackageError(
            "UNSAFE_LINK", f"symlink {_show(path)} points to {_show(target)}, outside the package"
        )


def _json_too_large(path: str, size: int, limit: int) -> PackageError:
    return PackageError(
        "PACKAGE_JSON_TOO_LARGE", f"{path} is {_human(size)}, over the {_human(limit)} limit"
    )


def _fold(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


def _digest(path: str) -> bytes:
    return hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()


def _member_path(name: str) -> str:
    """Normalise a member name ("./a//b/" -> "a/b") or refuse it as unsafe."""
    problem, path = _check_name(name)
    if problem:
        # Quoting is done only here: it is the slow part, and most names are fine.
        raise PackageError("UNSAFE_PATH", f"member {_show(name)} {problem}")
    return path


def _check_name(name: str) -> tuple[str | None, str]:
    """Return (what is wrong with the name or None, the normalised name)."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "has a name that is not valid UTF-8", ""
    if _CONTROL_CHARS.search(name):
        return "has a control character in its name", ""
    if "\\" in name:
        # A separator on Windows: refuse rather than guess what the author meant.
        return "has a backslash in its name", ""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or (parts and _is_drive(parts[0])):
        return "has an absolute path", ""
    if ".." in parts:
        return ("escapes the package" if _climbs_out(parts) else "has a '..' component"), ""
    if len(encoded) > MAX_PATH_BYTES:
        return f"has a name longer than {MAX_PATH_BYTES} bytes", ""
    if len(parts) > MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} folders deep", ""
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
        return f"has a path component longer than {MAX_NAME_BYTES} bytes", ""
    return None, "/".join(parts)


def _is_drive(part: str) -> bool:
    return len(part) == 2 and part[1] == ":" and part[0].isascii() and part[0].isalpha()


def _climbs_out(parts: list[str]) -> bool:
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def _member_kind(member: tarfile.TarInfo, path: str) -> str:
    if member.size < 0:
        raise PackageError("CORRUPT", f"member {_show(path or member.name)} has a negative size")
    if member.isreg():
        return _FILE
    if member.isdir():
        return _FOLDER
    if member.issym():
        return _SYMLINK
    if member.islnk():
        return _HARDLINK
    if member.ischr():
        what = "a character device"
    elif member.isblk():
        what = "a block device"
    elif member.isfifo():
        what = "a FIFO (named pipe)"
    else:
        what = f"of an unsupported type ({member.type!r})"
    raise PackageError("UNSAFE_MEMBER", f"member {_show(path or member.name)} is {what}")


def _symlink_target(path: str, linkname: str) -> tuple[str, int]:
    """Check a symlink target's form; return it normalised, with its leading '..' count."""
    try:
        size = len(linkname.encode("utf-8"))
    except UnicodeEncodeError:
        raise PackageError(
            "UNSAFE_LINK", f"symlink {_show(path)} has a target that is not valid UTF-8"
        ) from None
    problem = None
    if not linkname:
        problem = "has an empty target"
    elif _CONTROL_CHARS.search(linkname) or "\\" in linkname:
        problem = f"has an unsafe target {_show(linkname)}"
    elif size > MAX_PATH_BYTES:
        problem = f"has a target longer than {MAX_PATH_BYTES} bytes"
    if problem:
        raise PackageError("UNSAFE_LINK", f"symlink {_show(path)} {problem}")
    parts = [part for part in linkname.split("/") if part not in ("", ".")]
    if linkname.startswith("/") or (parts and _is_drive(parts[0])):
        raise PackageError(
            "UNSAFE_LINK", f"symlink {_show(path)} points to {_show(linkname)}, outside the package"
        )
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        # "a/../.." resolves "a" first; if "a" is itself a link, ".." leaves from wherever it
        # points. Only leading ".." can be checked without the file system.
        raise PackageError(
            "UNSAFE_LINK",
            f"symlink {_show(path)} has the target {_show(linkname)}; "
            "'..' may only lead the target",
        )
    return "/".join(parts) or ".", ups


# --------------------------------------------------------------------------------------------
# package.json


def _parse_config(raw: bytes, where: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8-sig")  # a BOM is tolerated, as npm does
    except UnicodeDecodeError as exc:
        raise PackageError(
            "INVALID_JSON",
            f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
        ) from None
    try:
        config = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PackageError(
            "INVALID_JSON",
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise PackageError("INVALID_JSON", f"{where} is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with thousands of digits
        raise PackageError("INVALID_JSON", f"{where} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PackageError(
            "INVALID_JSON", f"{where} must be a JSON object, not {_json_type(config)}"
        )
    _check_storable(config, where)
    return config


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_storable(config: dict[str, Any], where: str) -> None:
    # The config is stored in the database as JSON: PostgreSQL refuses NUL in jsonb, lone
    # surrogates ("\ud800") cannot be encoded at all, and 1e999 parses as infinity, which is
    # not JSON. Refuse them here with a 422 rather than fail later with a 500.
    stack: list[Any] = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not _clean_text(value):
            raise PackageError(
                "INVALID_JSON",
                f"{where} has a string with a NUL character or an unpaired surrogate",
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise PackageError("INVALID_JSON", f"{where} has a number too large to store")


def _clean_text(text: str) -> bool:
    if "\0" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _check_fields(config: dict[str, Any], where: str) -> None:
    for key in ("name", "version", "description"):
        if key in config and not isinstance(config[key], str):
            raise _field_error(where, key, "a string", config[key])
    engines = config.get("engines", {})
    if not isinstance(engines, dict):
        raise _field_error(where, "engines", "an object", engines)
    for engine, version in engines.items():
        if not isinstance(version, str):
            raise _field_error(where, f"engines.{engine}", "a version string", version)
    if "args" in config and not isinstance(config["args"], list):
        raise _field_error(where, "args", "an array", config["args"])


def _field_error(where: str, key: str, wanted: str, value: Any) -> PackageError:
    return PackageError(
        "INVALID_FIELD", f"{_show(key)} in {where} must be {wanted}, not {_json_type(value)}"
    )


def _check_main(
    config: dict[str, Any], where: str, root: str, scanner: _Scanner
) -> tuple[str, str]:
    """The file ``main`` names, relative to the package root, and the language that runs it;
    or refuse it."""
    if "main" not in config:
        raise PackageError("INVALID_MAIN", f"{where} has no 'main' (the file to run)")
    main = config["main"]
    if not isinstance(main, str):
        raise PackageError(
            "INVALID_MAIN", f"'main' in {where} must be a string, not {_json_type(main)}"
        )
    shown = _show(main)
    if not main.strip():
        raise PackageError("INVALID_MAIN", f"'main' in {where} is empty")
    relative = _main_path(main, shown)
    if relative is None:
        raise PackageError("INVALID_MAIN", f"main {shown} is a folder, not a file")

    def kind(path: str) -> str | None:
        return scanner.kind_of(f"{root}/{path}" if root else path)

    def folder_main(folder: str) -> str | None:
        inner = f"{folder}/package.json"
        if kind(inner) != _FILE:
            return None
        return scanner.nested_mains.get(f"{root}/{inner}" if root else inner)

    def is_file(path: str) -> bool:
        return kind(path) in (_FILE, _HARDLINK)

    found = resolve_main(
        relative, _languages(config), is_file, lambda p: kind(p) == _FOLDER, folder_main
    )
    if found is not None:
        return found
    what = kind(relative)
    if what not in (None, _FOLDER):
        raise PackageError("INVALID_MAIN", f"main {shown} is a {what}, not a regular file")
    if what == _FOLDER:
        raise PackageError(
            "INVALID_MAIN",
            f"main {shown} is a folder, with neither a package.json naming its main nor an index",
        )
    raise PackageError("MAIN_NOT_FOUND", f"main {shown} is not in the package")


def _main_path(main: str, shown: str) -> str | None:
    """``main`` normalised ("./a//b" -> "a/b"), None for the root or a path ending in "/";
    refuses an absolute path, a '..', a control character or a backslash."""
    if _CONTROL_CHARS.search(main) or "\\" in main:
        raise PackageError("INVALID_MAIN", f"main {shown} has a control character or a backslash")
    parts = [part for part in main.split("/") if part not in ("", ".")]
    if main.startswith("/") or (parts and _is_drive(parts[0])):
        raise PackageError(
            "INVALID_MAIN", f"main {shown} is an absolute path; use a path inside the package"
        )
    if ".." in parts:
        problem = "escapes the package" if _climbs_out(parts) else "has a '..' component"
        raise PackageError("INVALID_MAIN", f"main {shown} {problem} ('..' is not allowed)")
    if not parts or main.endswith("/"):
        return None
    return "/".join(parts)


def _languages(config: dict[str, Any]) -> tuple[str, ...]:
    """Which rules may resolve ``main``, in order: the engine's, else Node's then Python's
    (STH runs a package without engines.python3 in Node)."""
    engines = config.get("engines") or {}
    if "python3" in engines:
        return ("python",)
    if "node" in engines:
        return ("node",)
    return ("node", "python")


def resolve_main(
    main: str,
    languages: tuple[str, ...],
    is_file: Callable[[str], bool],
    is_folder: Callable[[str], bool],
    folder_main: Callable[[str], str | None],
) -> tuple[str, str] | None:
    """(file, language) that ``main`` (normalised, relative) names under the rules of
    MAIN_SUFFIXES, or None. A file named exactly, without engines, runs in the language of
    its extension (``.py``: Python)."""
    if len(languages) > 1 and is_file(main):
        return main, _language_of(main)
    for language in languages:
        suffixes = MAIN_SUFFIXES[language]

        def as_file(path: str, suffixes: tuple[str, ...] = suffixes) -> str | None:
            return next((path + end for end in suffixes if is_file(path + end)), None)

        found = as_file(main)
        if found is None and language == "node" and is_folder(main):
            inner = folder_main(main)
            target = _inner_main(main, inner) if inner is not None else None
            if target is not None:
                found = as_file(target) or as_file(f"{target}/index", suffixes[1:])
            found = found or as_file(f"{main}/index", suffixes[1:])
        if found is not None:
            return found, language
    return None


def _language_of(path: str) -> str:
    if path.endswith(".py"):
        return "python"
    if path.endswith(_NODE_SUFFIXES):
        return "node"
    raise PackageError(
        "UNKNOWN_LANGUAGE",
        f"cannot tell how to run main {_show(path)}: add engines.python3 or engines.node to "
        "package.json, or use a .py or .js main",
    )


def _inner_main(folder: str, inner: str) -> str | None:
    """A nested package.json's "main" joined to its folder, if that stays a path inside."""
    parts = folder.split("/")
    for part in inner.split("/"):
        if part in ("", "."):
            continue
        if part == ".." or "\\" in part or _CONTROL_CHARS.search(part):
            return None
        parts.append(part)
    return "/".join(parts) if len(parts) > folder.count("/") + 1 else None


# --------------------------------------------------------------------------------------------
# Extraction


def _sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _extract_into(path: str | os.PathLike[str], staging: Path, info: PackageInfo) -> None:
    # Validate again while writing: the archive is the inspected one (hash checked), but
    # extraction must never depend on that alone.
    scanner = _Scanner(
        max_files=2**62,  # counted on upload; the hash ties this file to that inspection
        max_bytes=info.unpacked_size,
        max_json_bytes=2**62,
        read_json=False,
        root=info.root,
    )
    with _open_archive(path, info.unpacked_size) as (tar, reader):
        for member in _members(tar, reader):
            member_path = scanner.add(member, tar)
            relative = _strip_root(member_path, info.root)
            if not relative:
                continue
            if not HAS_FILTERS:
                tar.extract(_filtered_by_hand(relative, member, info.root), staging)
                continue
            try:
                tar.extract(member, staging, filter=_data_filter(relative, member, info.root))
            except tarfile.FilterError as exc:  # pragma: no cover - the scanner refuses first
                raise PackageError(
                    "UNSAFE_MEMBER", f"member {_show(member_path)} was refused: {exc}"
                ) from None
        reader.drain()
    if reader.sha256 != info.sha256:
        raise PackageError("CHECKSUM_MISMATCH", "the package file changed while it was extracted")
    if scanner.resolve_root() != info.root:  # pragma: no cover - impossible with a matching hash
        raise PackageError("CHECKSUM_MISMATCH", "the package root changed since inspection")


def readable_by_all(folder: Path) -> None:
    """Children may run as other users (HUB_RUN_AS): they read what is under `folder` (a
    package, the runtime's lent library), never write it."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode  # links are left alone: they point inside the package
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)
            elif stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o100 else 0o644)


def _strip_root(path: str, root: str) -> str:
    if not root:
        return path
    if path == root:
        return ""
    if not path.startswith(root + "/"):  # pragma: no cover - impossible with a matching hash
        raise PackageError(
            "UNSAFE_PATH", f"member {_show(path)} is outside the folder {_show(root)}"
        )
    return path[len(root) + 1 :]


def _checked_names(relative: str, member: tarfile.TarInfo, root: str) -> dict[str, Any]:
    """The member's checked, normalised name, and its link's for a link."""
    changes: dict[str, Any] = {"name": relative}
    if member.islnk():
        changes["linkname"] = _strip_root(_member_path(member.linkname), root)
    elif member.issym():
        changes["linkname"] = _symlink_target(relative, member.linkname)[0]
    return changes


def _data_filter(relative: str, member: tarfile.TarInfo, root: str) -> Any:
    """Write the member under its checked, normalised name, then apply tarfile's data filter."""
    changes = _checked_names(relative, member, root)

    def apply(tarinfo: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        return tarfile.data_filter(tarinfo.replace(**changes, deep=False), dest)

    return apply


# tarfile's extraction filters came in Python 3.11.4 (and 3.12); Debian 12's Python is 3.11.2.
HAS_FILTERS = hasattr(tarfile, "data_filter")


def _filtered_by_hand(relative: str, member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """What `_data_filter` makes of a member, for Pythons without tarfile's filters: its checked
    name and link, no owner (the unpacking user's), no setuid, setgid, sticky or group and
    other write bits, files readable and writable by their owner. The scanner has refused
    everything else the data filter refuses (absolute names, escapes, devices, links out)."""
    copy = copy_module.copy(member)
    for name, value in _checked_names(relative, member, root).items():
        setattr(copy, name, value)
    copy.uid, copy.gid = os.geteuid(), os.getegid()
    copy.uname = copy.gname = ""
    owner = 0o700 if member.isdir() else 0o600 if member.isreg() or member.islnk() else 0
    copy.mode = member.mode & 0o755 | owner
    return copy


def publish_folder(staging: Path, dest: Path) -> None:
    """Atomically move the finished folder into place, unless someone else got there first."""
    try:
        os.rename(staging, dest)
    except OSError:
        if not dest.exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another worker extracted it meanwhile


# --------------------------------------------------------------------------------------------
# Messages


def _show(text: str, limit: int = 120) -> str:
    """Quote a name for a message: control characters and undecodable bytes escaped, shortened."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif char in "\\'":
            out.append("\\" + char)
        else:
            out.append(char)
    shown = "".join(out)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return f"'{shown}'"


def _human(size: int) -> str:
    if size >= 1 << 50:  # pax sizes can have hundreds of digits; say it plainly
        return "more than 1 PiB"
    if size < KIB:
        return f"{size} bytes"
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{size} bytes"  # pragma: no cover
