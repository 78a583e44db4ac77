"""Malformed and hostile sequence packages, built in code, each with the refusal it must get.

``corpus()`` lists them; every entry knows how to write itself into a folder
(``entry.write(tmp_path)``), the error ``code`` that ``sequences.packages.inspect_package`` must
raise, and a fragment of the message. API tests reuse it: POST each package, expect 422 with the
code, and check that nothing was stored.

The codes are stable under ``CORPUS_LIMITS`` (the hub's defaults) and under any limits with
``100 <= max_files <= 100_000``, ``64 MiB <= max_bytes <= 512 MiB`` and
``64 KiB <= max_json_bytes <= 1 MiB``.

Builders are cheap: each takes a fraction of a second, and the biggest file is about 1 MB. Big
contents (the 100,000-file archive, the 600 MiB bombs, the 50 MB package.json) are streamed to
disk, never held whole in memory.

``good_package()`` builds valid packages for other tests.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import random
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

KIB = 1024
MIB = 1024 * KIB

CORPUS_LIMITS: dict[str, int] = {
    "max_files": 10_000,
    "max_bytes": 512 * MIB,
    "max_json_bytes": 1 * MIB,
}

# Bigger than any max_bytes the corpus supports, so the bombs are refused whatever the limit.
BOMB_BYTES = 600 * MIB
MANY_FILES = 100_000

MAIN_PY = b"async def run(context, input, *args):\n    return 'hello'\n"
PACKAGE_JSON: dict[str, Any] = {"name": "bad", "version": "1.0.0", "main": "main.py"}

Builder = Callable[[Path], Path]


@dataclass(frozen=True)
class BadPackage:
    """One refused package: how to build it, and the error it must get."""

    name: str
    build: Builder | bytes
    code: str
    message_contains: str

    def write(self, tmp_dir: Path) -> Path:
        """Write the package into ``tmp_dir`` and return its path."""
        if isinstance(self.build, bytes):
            path = Path(tmp_dir) / f"{self.name}.tar.gz"
            path.write_bytes(self.build)
            return path
        return self.build(Path(tmp_dir))

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------
# Valid packages


_serial = itertools.count()


def good_package(
    tmp_dir: Path,
    files: dict[str, str | bytes],
    package_json: dict[str, Any] | None = None,
    root: str = "",
) -> Path:
    """Write a valid package and return its path.

    ``files`` maps paths ("lib/util.py") to contents. Without ``package_json`` the package gets
    ``{"name": "demo", "version": "1.0.0", "main": "main.py"}``, and a small ``main.py`` when
    ``files`` has none. A ``package.json`` in ``files`` is written as given instead. ``root``
    wraps everything in that top folder, as ``tar czf x.tgz folder`` does. Folder entries are
    written for every parent folder, as tar does.
    """
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    if "package.json" not in contents:
        config = package_json
        if config is None:
            config = {"name": "demo", "version": "1.0.0", "main": "main.py"}
            contents.setdefault("main.py", MAIN_PY)
        contents["package.json"] = json.dumps(config, indent=2).encode()
    prefix = f"{root.strip('/')}/" if root else ""
    folders = {prefix.rstrip("/")} if prefix else set()
    for path in contents:
        parts = (prefix + path).split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    members = [_dir(folder) for folder in sorted(folders)]
    members += [_file(prefix + path, data) for path, data in sorted(contents.items())]
    target = Path(tmp_dir) / f"good-{next(_serial)}.tar.gz"
    target.write_bytes(_gz(_tar(members)))
    return target


# --------------------------------------------------------------------------------------------
# Building blocks

Member = tuple[tarfile.TarInfo, bytes | None]


def _info(
    name: str, kind: bytes, *, size: int = 0, linkname: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = linkname
    info.mode = mode
    info.mtime = 1_700_000_000
    return info


def _file(name: str, data: bytes | str = b"", **pax: str) -> Member:
    raw = data.encode() if isinstance(data, str) else data
    info = _info(name, tarfile.REGTYPE, size=len(raw))
    info.pax_headers = dict(pax)
    return info, raw


def _dir(name: str) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=0o755), None


def _symlink(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777), None


def _hardlink(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, linkname=target), None


def _special(name: str, kind: bytes) -> Member:
    return _info(name, kind), None


def _package_json(config: Any = None, *, raw: bytes | None = None, name: str = "") -> Member:
    data = raw if raw is not None else json.dumps(PACKAGE_JSON if config is None else config)
    return _file(f"{name}package.json", data)


def _base(config: Any = None) -> list[Member]:
    """The members of a valid package: package.json and main.py."""
    return [_package_json(config), _file("main.py", MAIN_PY)]


def _tar(members: Iterable[Member], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _blocks(data: bytes) -> bytes:
    """Pad to whole 512-byte tar blocks."""
    return data + bytes(-len(data) % 512)


END = bytes(1024)  # the tar end-of-archive marker


def _header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    linkname: bytes = b"",
    size_field: bytes | None = None,
    bad_checksum: bool = False,
) -> bytes:
    """A raw ustar header, for what tarfile refuses to write."""
    buf = bytearray(512)
    buf[0 : min(len(name), 100)] = name[:100]
    buf[100:108] = b"0000644\0"
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    buf[124:136] = size_field if size_field is not None else b"%011o\0" % size
    buf[136:148] = b"%011o\0" % 1_700_000_000
    buf[148:156] = b" " * 8
    buf[156:157] = kind
    buf[157 : 157 + len(linkname)] = linkname
    buf[257:265] = b"ustar\x0000"
    checksum = sum(buf) + (1 if bad_checksum else 0)
    buf[148:156] = b"%06o\0 " % checksum
    return bytes(buf)


def _raw_file(name: bytes, data: bytes) -> bytes:
    return _header(name, size=len(data)) + _blocks(data)


def _raw_base() -> bytes:
    return _raw_file(b"package.json", json.dumps(PACKAGE_JSON).encode()) + _raw_file(
        b"main.py", MAIN_PY
    )


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _pax(records: Iterable[tuple[bytes, bytes]], *, kind: bytes = b"x") -> bytes:
    data = b"".join(_pax_record(key, value) for key, value in records)
    return _header(b"PaxHeader", kind=kind, size=len(data)) + _blocks(data)


@dataclass(frozen=True)
class _Fill:
    """``count`` copies of one byte, compressed without ever building them in memory."""

    byte: int
    count: int


def _write_gzip(out: BinaryIO, segments: Iterable[bytes | _Fill]) -> None:
    """Write a gzip file of the segments, streaming: memory stays at about 1 MiB.

    A long run of one byte is compressed one MiB at a time with a full flush after each,
    which makes every MiB compress to the same bytes once the compressor is in its steady
    state; from then on those bytes are simply repeated, so 600 MiB costs a few milliseconds
    plus its CRC.
    """
    out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, mtime 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = 0
    size = 0
    for segment in segments:
        if isinstance(segment, bytes):
            out.write(compressor.compress(segment))
            crc = zlib.crc32(segment, crc)
            size += len(segment)
            continue
        chunk = bytes([segment.byte]) * MIB
        whole, rest = divmod(segment.count, MIB)
        out.write(compressor.flush(zlib.Z_FULL_FLUSH))
        previous = repeated = None
        for _ in range(whole):
            if repeated is None:
                block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
                if block == previous:
                    repeated = block
                previous = block
            out.write(repeated or previous)
            crc = zlib.crc32(chunk, crc)
        tail = chunk[:rest]
        out.write(compressor.compress(tail))
        crc = zlib.crc32(tail, crc)
        size += segment.count
    out.write(compressor.flush())
    out.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def _streamed(name: str, segments: Callable[[], Iterable[bytes | _Fill]]) -> Builder:
    def build(tmp_dir: Path) -> Path:
        path = tmp_dir / f"{name}.tar.gz"
        with path.open("wb") as out:
            _write_gzip(out, segments())
        return path

    return build


def _bytes(name: str, make: Callable[[], bytes]) -> Builder:
    def build(tmp_dir: Path) -> Path:
        path = tmp_dir / f"{name}.tar.gz"
        path.write_bytes(make())
        return path

    return build


def gzip_bomb(tmp_dir: Path, unpacked: int = BOMB_BYTES, name: str = "bomb") -> Path:
    """A package whose ``zeros.bin`` holds ``unpacked`` zero bytes (about 1,000:1 compressed).

    Deflate cannot do better than about 1,032:1, so "10,000:1" only exists for nested
    archives; what matters here is that the unpacked size is far over the limit.
    """
    return _streamed(name, lambda: _bomb_segments(unpacked))(Path(tmp_dir))


def _bomb_segments(unpacked: int) -> list[bytes | _Fill]:
    header = _header(b"zeros.bin", size=unpacked)
    # The file's padding and the end-of-archive marker are zeros too.
    return [_raw_base() + header, _Fill(0, unpacked + (-unpacked % 512) + len(END))]


def zeros_after_end(tmp_dir: Path, trailing: int = BOMB_BYTES, name: str = "hidden") -> Path:
    """A valid, tiny package followed by ``trailing`` zero bytes after its end-of-archive marker.

    No header announces the size, so only counting decompressed bytes catches it.
    """
    segments = [_tar(_base()), _Fill(0, trailing)]
    return _streamed(name, lambda: segments)(Path(tmp_dir))


def _many_files(count: int) -> Iterator[bytes]:
    """A tar of package.json, main.py and ``count`` empty files, built from a header template,
    in pieces of 1,000 headers."""
    template = bytearray(_header(b"f/000000"))
    template[148:156] = b" " * 8
    base_sum = sum(template) - sum(b"000000")
    yield _raw_base()
    batch = []
    for index in range(count):
        digits = b"%06d" % index
        template[2:8] = digits
        template[148:156] = b"%06o\0 " % (base_sum + sum(digits))
        batch.append(bytes(template))
        if len(batch) == 1000:
            yield b"".join(batch)
            batch.clear()
    yield b"".join(batch) + END


def _write_many_files(tmp_dir: Path) -> Path:
    path = tmp_dir / "too_many_files.tar.gz"
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as out:
        for piece in _many_files(MANY_FILES):
            out.write(piece)
    return path


# --------------------------------------------------------------------------------------------
# The corpus


def _members(
    name: str, members: Callable[[], list[Member]], fmt: int = tarfile.PAX_FORMAT
) -> Builder:
    return _bytes(name, lambda: _gz(_tar(members(), fmt=fmt)))


def _raw(name: str, make: Callable[[], bytes]) -> Builder:
    return _bytes(name, lambda: _gz(make()))


def _with_config(name: str, config: Any, *extra: Member) -> Builder:
    return _members(name, lambda: [*_base(config), *extra])


def _corrupt_crc() -> bytes:
    data = bytearray(_gz(_tar(_base())))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    return bytes(data)


def _truncated_member() -> bytes:
    tar = _tar([*_base(), _file("data.bin", bytes(range(256)) * 40)])
    return _gz(tar[: 2048 + 512 + 3000])  # inside data.bin's 10,240 bytes


def _gzip_family() -> list[BadPackage]:
    noise = random.Random(7).randbytes(4096)
    return [
        BadPackage("empty_file", b"", "NOT_GZIP", "empty"),
        BadPackage("random_bytes", noise, "NOT_GZIP", "not gzip-compressed"),
        BadPackage("json_text", json.dumps(PACKAGE_JSON).encode(), "NOT_GZIP", "gzip signature"),
        BadPackage(
            "tar_not_gzipped",
            _bytes("tar_not_gzipped", lambda: _tar(_base())),
            "NOT_GZIP",
            "tar archive but is not gzip-compressed",
        ),
        BadPackage("zip_archive", _bytes("zip_archive", _zip), "NOT_GZIP", "zip archive"),
        BadPackage(
            "bzip2_tar",
            _bytes("bzip2_tar", lambda: bz2.compress(_tar(_base()))),
            "NOT_GZIP",
            "bzip2",
        ),
        BadPackage(
            "xz_tar", _bytes("xz_tar", lambda: lzma.compress(_tar(_base()))), "NOT_GZIP", "xz"
        ),
        BadPackage("gzip_of_text", _gz(b"hello, this is not a tar\n" * 40), "NOT_TAR", "not a tar"),
        BadPackage("gzip_of_nothing", _gz(b""), "NOT_TAR", "empty"),
        BadPackage("gzip_of_random", _gz(noise), "NOT_TAR", "not a tar archive"),
        BadPackage(
            "gzip_twice",
            _bytes("gzip_twice", lambda: _gz(_gz(_tar(_base())))),
            "NOT_TAR",
            "compressed twice",
        ),
        BadPackage(
            "truncated_gzip",
            _bytes("truncated_gzip", lambda: _gz(_tar(_base()))[:-30]),
            "TRUNCATED",
            "gzip stream ends early",
        ),
        BadPackage("gzip_header_only", _gz(b"")[:10], "TRUNCATED", "gzip stream ends early"),
        BadPackage("gzip_bad_crc", _bytes("gzip_bad_crc", _corrupt_crc), "CORRUPT", "data check"),
        BadPackage(
            "gzip_bad_deflate", _gz(b"")[:10] + b"\x07\x00\x00\x00", "CORRUPT", "block type"
        ),
        BadPackage(
            "garbage_after_gzip",
            _bytes("garbage_after_gzip", lambda: _gz(_tar(_base())) + b"trailing garbage"),
            "CORRUPT",
            "after the end of the gzip stream",
        ),
        BadPackage(
            "tar_truncated_in_member",
            _bytes("tar_truncated_in_member", _truncated_member),
            "TRUNCATED",
            "member 'data.bin' is truncated",
        ),
        BadPackage(
            "tar_truncated_in_header",
            _raw("tar_truncated_in_header", lambda: _raw_base()[:1100]),
            "TRUNCATED",
            "middle of a member header",
        ),
        BadPackage(
            "tar_bad_header_checksum",
            _raw(
                "tar_bad_header_checksum",
                lambda: (
                    _raw_file(b"package.json", json.dumps(PACKAGE_JSON).encode())
                    + _header(b"main.py", size=len(MAIN_PY), bad_checksum=True)
                    + _blocks(MAIN_PY)
                    + END
                ),
            ),
            "CORRUPT",
            "corrupt at byte 1024",
        ),
        BadPackage(
            "malformed_pax_header",
            _raw("malformed_pax_header", lambda: _pax_garbage() + _raw_base() + END),
            "CORRUPT",
            "pax header",
        ),
        BadPackage(
            "negative_size",
            _raw("negative_size", lambda: _raw_base() + _header(b"x.py", size_field=b"\xff" * 12)),
            "CORRUPT",
            "negative size",
        ),
    ]


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("package.json", json.dumps(PACKAGE_JSON))
        archive.writestr("main.py", MAIN_PY)
    return buf.getvalue()


def _pax_garbage() -> bytes:
    data = b"99 path=main.py\n"  # the length says 99, the record is 16 bytes
    return _header(b"PaxHeader", kind=b"x", size=len(data)) + _blocks(data)


def _name_family() -> list[BadPackage]:
    def bad(
        name: str, member_name: str, contains: str, fmt: int = tarfile.PAX_FORMAT
    ) -> BadPackage:
        return BadPackage(
            name,
            _members(name, lambda: [*_base(), _file(member_name, "x")], fmt),
            "UNSAFE_PATH",
            contains,
        )

    return [
        bad("dotdot_traversal", "../evil.py", "member '../evil.py' escapes the package"),
        bad("dotdot_deep_traversal", "lib/../../evil.py", "escapes the package"),
        bad("dotdot_inside", "lib/../main2.py", "'..' component"),
        bad("absolute_path", "/etc/cron.d/evil", "member '/etc/cron.d/evil' has an absolute path"),
        bad("windows_drive_path", "C:/evil.py", "absolute path"),
        bad("backslash_traversal", "..\\evil.py", "backslash"),
        bad("newline_in_name", "evil\n.py", "control character"),
        bad("escape_sequence_in_name", "evil\x1b[2J.py", "control character"),
        bad("c1_control_in_name", "evil\x9b.py", "control character"),
        bad(
            "non_utf8_name",
            "caf\udce9.py",
            "member 'caf\\xe9.py' has a name that is not valid UTF-8",
            tarfile.GNU_FORMAT,
        ),
        bad("path_too_long", "abcdefghij/" * 100 + "x.py", "longer than 1024 bytes"),
        bad("component_too_long", "x" * 300 + ".py", "component longer than 255 bytes"),
        bad("path_too_deep", "d/" * 80 + "x.py", "more than 64 folders deep"),
        BadPackage(
            "nul_in_pax_name",
            _members("nul_in_pax_name", lambda: [*_base(), _file("x.py", "x", path="evil\0.py")]),
            "UNSAFE_PATH",
            "control character",
        ),
        BadPackage(
            "non_utf8_pax_name",
            _raw(
                "non_utf8_pax_name",
                lambda: (
                    _raw_base() + _pax([(b"path", b"caf\xe9.py")]) + _raw_file(b"x.py", b"x") + END
                ),
            ),
            "UNSAFE_PATH",
            "not valid UTF-8",
        ),
    ]


def _type_family() -> list[BadPackage]:
    def with_members(
        name: str, code: str, contains: str, *extra: Member, fmt: int = tarfile.PAX_FORMAT
    ) -> BadPackage:
        return BadPackage(name, _members(name, lambda: [*_base(), *extra], fmt), code, contains)

    return [
        with_members(
            "symlink_absolute",
            "UNSAFE_LINK",
            "symlink 'passwd' points to '/etc/passwd'",
            _symlink("passwd", "/etc/passwd"),
        ),
        with_members(
            "symlink_relative_escape",
            "UNSAFE_LINK",
            "outside the package",
            _dir("lib"),
            _symlink("lib/up", "../../etc"),
        ),
        BadPackage(
            "symlink_escapes_root_folder",
            _members(
                "symlink_escapes_root_folder",
                lambda: [
                    _dir("pkg"),
                    _package_json(name="pkg/"),
                    _file("pkg/main.py", MAIN_PY),
                    _symlink("pkg/up", "../outside"),
                ],
            ),
            "UNSAFE_LINK",
            "symlink 'pkg/up' points to '../outside', outside the package",
        ),
        with_members(
            "symlink_dotdot_after_name",
            "UNSAFE_LINK",
            "'..' may only lead",
            _dir("sub"),
            _symlink("sub/up", ".."),
            _symlink("sub/evil", "up/../.."),
        ),
        with_members(
            "member_through_symlink",
            "UNSAFE_LINK",
            "goes through the symlink 'lib'",
            _dir("sub"),
            _symlink("lib", "sub"),
            _file("lib/evil.py", "x"),
        ),
        with_members(
            "member_through_symlink_other_case",
            "UNSAFE_LINK",
            "goes through the symlink 'lib'",
            _dir("sub"),
            _symlink("LIB", "sub"),
            _file("lib/evil.py", "x"),
        ),
        with_members(
            "symlink_over_folder_other_case",
            "UNSAFE_LINK",
            "is a symlink but other members are inside it",
            _file("Lib/x.py", "x"),
            _symlink("lIB", "sub"),
        ),
        with_members(
            "symlink_over_folder",
            "UNSAFE_LINK",
            "is a symlink but other members are inside it",
            _file("lib/x.py", "x"),
            _symlink("lib", "sub"),
        ),
        with_members(
            "symlink_non_utf8_target",
            "UNSAFE_LINK",
            "not valid UTF-8",
            _symlink("link", "caf\udce9"),
            fmt=tarfile.GNU_FORMAT,
        ),
        with_members(
            "hardlink_escape",
            "UNSAFE_LINK",
            "hardlink 'shadow' points to '../../etc/shadow'",
            _hardlink("shadow", "../../etc/shadow"),
        ),
        with_members(
            "hardlink_absolute",
            "UNSAFE_LINK",
            "outside the package",
            _hardlink("passwd", "/etc/passwd"),
        ),
        with_members(
            "hardlink_missing_target",
            "UNSAFE_LINK",
            "not an earlier file in the package",
            _hardlink("copy.py", "nothere.py"),
        ),
        with_members(
            "hardlink_to_folder",
            "UNSAFE_LINK",
            "not an earlier file",
            _dir("lib"),
            _hardlink("copy", "lib"),
        ),
        with_members(
            "hardlink_forward_reference",
            "UNSAFE_LINK",
            "not an earlier file",
            _hardlink("copy.py", "later.py"),
            _file("later.py", "x"),
        ),
        with_members(
            "char_device",
            "UNSAFE_MEMBER",
            "member 'null' is a character device",
            _special("null", tarfile.CHRTYPE),
        ),
        with_members(
            "block_device", "UNSAFE_MEMBER", "block device", _special("sda", tarfile.BLKTYPE)
        ),
        with_members("fifo", "UNSAFE_MEMBER", "FIFO", _special("pipe", tarfile.FIFOTYPE)),
        BadPackage(
            "gnu_sparse_file",
            _raw("gnu_sparse_file", lambda: _raw_base() + _header(b"sparse.bin", kind=b"S") + END),
            "UNSAFE_MEMBER",
            "sparse file",
        ),
        with_members(
            "pax_sparse_file",
            "UNSAFE_MEMBER",
            "sparse file",
            _file("sparse.bin", bytes(512), **{"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}),
        ),
        BadPackage(
            "unknown_member_type",
            _raw("unknown_member_type", lambda: _raw_base() + _header(b"volume", kind=b"V") + END),
            "UNSAFE_MEMBER",
            "unsupported type",
        ),
        BadPackage(
            "huge_pax_header",
            _raw(
                "huge_pax_header",
                lambda: _pax([(b"comment", b"a" * (2 * MIB))]) + _raw_base() + END,
            ),
            "UNSAFE_MEMBER",
            "extended tar header",
        ),
        BadPackage(
            "huge_gnu_long_name",
            _raw(
                "huge_gnu_long_name",
                lambda: (
                    _header(b"././@LongLink", kind=b"L", size=2 * MIB)
                    + b"a" * (2 * MIB)
                    + _raw_base()
                    + END
                ),
            ),
            "UNSAFE_MEMBER",
            "extended tar header",
        ),
        BadPackage(
            "pax_header_chain",
            _raw(
                "pax_header_chain",
                lambda: _pax([(b"comment", b"again")]) * 20 + _raw_base() + END,
            ),
            "UNSAFE_MEMBER",
            "extended tar headers in a row",
        ),
        BadPackage(
            "pax_header_with_many_records",
            _raw(
                "pax_header_with_many_records",
                lambda: _pax([(b"comment", b"x")] * 5000) + _raw_base() + END,
            ),
            "UNSAFE_MEMBER",
            "records",
        ),
        BadPackage(
            "global_pax_headers_add_up",
            _raw(
                "global_pax_headers_add_up",
                lambda: (
                    b"".join(
                        _pax([(b"comment", b"x" * 500_000)], kind=b"g") + _raw_file(b"f%d" % i, b"")
                        for i in range(3)
                    )
                    + _raw_base()
                    + END
                ),
            ),
            "UNSAFE_MEMBER",
            "global pax headers add up",
        ),
        BadPackage(
            "global_pax_path",
            _raw(
                "global_pax_path",
                lambda: _pax([(b"path", b"main.py")], kind=b"g") + _raw_base() + END,
            ),
            "UNSAFE_MEMBER",
            "global pax header sets 'path'",
        ),
    ]


def _duplicate_family() -> list[BadPackage]:
    def dup(name: str, code: str, contains: str, *extra: Member) -> BadPackage:
        return BadPackage(name, _members(name, lambda: [*_base(), *extra]), code, contains)

    return [
        dup(
            "duplicate_file",
            "DUPLICATE_MEMBER",
            "member 'main.py' appears twice",
            _file("main.py", "print('shadow')"),
        ),
        dup(
            "duplicate_via_dot_slash",
            "DUPLICATE_MEMBER",
            "appears twice",
            _file("./main.py", "print('shadow')"),
        ),
        dup(
            "duplicate_via_double_slash",
            "DUPLICATE_MEMBER",
            "appears twice",
            _file("lib/x.py", "a"),
            _file("lib//x.py", "b"),
        ),
        dup(
            "duplicate_package_json",
            "DUPLICATE_MEMBER",
            "member 'package.json' appears twice",
            _package_json({"main": "evil.py"}),
        ),
        dup("duplicate_folder", "DUPLICATE_MEMBER", "appears twice", _dir("lib"), _dir("lib/")),
        dup(
            "folder_and_file_same_name",
            "DUPLICATE_MEMBER",
            "appears twice",
            _dir("lib"),
            _file("lib", "x"),
        ),
        dup(
            "file_then_member_inside",
            "PATH_CONFLICT",
            "is inside 'lib', which is a file",
            _file("lib", "x"),
            _file("lib/x.py", "x"),
        ),
        dup(
            "member_inside_then_file",
            "PATH_CONFLICT",
            "is a file but other members are inside",
            _file("lib/x.py", "x"),
            _file("lib", "x"),
        ),
    ]


def _size_family() -> list[BadPackage]:
    def json_segments() -> list[bytes | _Fill]:
        size = 50_000_000
        head = b'{"name": "big", "main": "main.py", "pad": "'
        tail = b'"}'
        return [
            _header(b"package.json", size=size) + head,
            _Fill(ord("x"), size - len(head) - len(tail)),
            tail + bytes(-size % 512) + _raw_file(b"main.py", MAIN_PY) + END,
        ]

    def add_up() -> list[bytes | _Fill]:
        # Each part is under the smallest supported max_bytes, together they are over the
        # largest: the sum must be what is refused.
        part = 60 * MIB
        segments: list[bytes | _Fill] = [_raw_base()]
        for index in range(10):
            segments += [_header(b"part%d.bin" % index, size=part), _Fill(0, part)]
        return [*segments, END]

    def folder_json_too_large() -> bytes:
        big = json.dumps({"main": "main.py", "pad": "x" * (2 * MIB)}).encode()
        return _tar([_file("pkg/package.json", big), _file("pkg/main.py", MAIN_PY)])

    return [
        BadPackage("too_many_files", _write_many_files, "TOO_MANY_FILES", "more than"),
        BadPackage(
            "gzip_bomb",
            lambda tmp: gzip_bomb(tmp, BOMB_BYTES, "gzip_bomb"),
            "TOO_LARGE",
            "member 'zeros.bin' is 600 MiB",
        ),
        BadPackage(
            "member_declares_one_tib",
            _raw(
                "member_declares_one_tib",
                lambda: (
                    _raw_base() + _pax([(b"size", str(1 << 40).encode())]) + _header(b"huge.bin")
                ),
            ),
            "TOO_LARGE",
            "member 'huge.bin' is 1024 GiB",
        ),
        BadPackage(
            "member_declares_absurd_size",
            _raw(
                "member_declares_absurd_size",
                lambda: _raw_base() + _pax([(b"size", b"9" * 400)]) + _header(b"huge.bin"),
            ),
            "TOO_LARGE",
            "member 'huge.bin' is more than 1 PiB",
        ),
        BadPackage(
            "files_add_up_over_limit",
            _streamed("files_add_up_over_limit", add_up),
            "TOO_LARGE",
            "files add up to more than",
        ),
        BadPackage(
            "zeros_after_end_marker",
            lambda tmp: zeros_after_end(tmp, BOMB_BYTES, "zeros_after_end_marker"),
            "TOO_LARGE",
            "unpacks to more than",
        ),
        BadPackage(
            "package_json_50mb",
            _streamed("package_json_50mb", json_segments),
            "PACKAGE_JSON_TOO_LARGE",
            "package.json is 47.7 MiB",
        ),
        BadPackage(
            "package_json_in_folder_too_large",
            _raw("package_json_in_folder_too_large", folder_json_too_large),
            "PACKAGE_JSON_TOO_LARGE",
            "pkg/package.json is 2.0 MiB",
        ),
    ]


def _package_json_family() -> list[BadPackage]:
    def members(
        name: str, code: str, contains: str, make: Callable[[], list[Member]]
    ) -> BadPackage:
        return BadPackage(name, _members(name, make), code, contains)

    main = _file("main.py", MAIN_PY)
    return [
        members("no_package_json", "NO_PACKAGE_JSON", "no package.json", lambda: [main]),
        members("only_folders", "NO_PACKAGE_JSON", "no package.json", lambda: [_dir("a")]),
        members("tar_without_members", "NO_PACKAGE_JSON", "empty", lambda: []),
        members(
            "package_json_two_levels_down",
            "NO_PACKAGE_JSON",
            "found 'a/b/package.json'",
            lambda: [_package_json(name="a/b/"), _file("a/b/main.py", MAIN_PY)],
        ),
        members(
            "two_top_folders_with_package_json",
            "NO_PACKAGE_JSON",
            "several top folders",
            lambda: [
                _package_json(name="a/"),
                _file("a/main.py", MAIN_PY),
                _package_json(name="b/"),
                _file("b/main.py", MAIN_PY),
            ],
        ),
        members(
            "top_folder_with_sibling_file",
            "NO_PACKAGE_JSON",
            "outside that folder",
            lambda: [_package_json(name="pkg/"), _file("pkg/main.py", MAIN_PY), _file("README")],
        ),
        members(
            "package_json_is_folder",
            "NO_PACKAGE_JSON",
            "package.json is a folder",
            lambda: [_dir("package.json"), main],
        ),
        members(
            "package_json_is_symlink",
            "NO_PACKAGE_JSON",
            "package.json is a symlink",
            lambda: [
                _file("real.json", json.dumps(PACKAGE_JSON)),
                _symlink("package.json", "real.json"),
                main,
            ],
        ),
        members(
            "package_json_not_utf8",
            "INVALID_JSON",
            "not valid UTF-8 (byte 0xe9",
            lambda: [_package_json(raw=b'{"main": "main.py", "name": "caf\xe9"}'), main],
        ),
        members(
            "package_json_syntax_error",
            "INVALID_JSON",
            "not valid JSON",
            lambda: [_package_json(raw=b'{"main": "main.py",}'), main],
        ),
        members(
            "package_json_empty",
            "INVALID_JSON",
            "not valid JSON",
            lambda: [_package_json(raw=b""), main],
        ),
        members(
            "package_json_array",
            "INVALID_JSON",
            "must be a JSON object, not an array",
            lambda: [_package_json(["main.py"]), main],
        ),
        members(
            "package_json_string",
            "INVALID_JSON",
            "not a string",
            lambda: [_package_json("main.py"), main],
        ),
        members(
            "package_json_deeply_nested",
            "INVALID_JSON",
            "nested too deeply",
            lambda: [
                _package_json(
                    raw=b'{"main": "main.py", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
                ),
                main,
            ],
        ),
        members(
            "package_json_nan",
            "INVALID_JSON",
            "NaN",
            lambda: [_package_json(raw=b'{"main": "main.py", "x": NaN}'), main],
        ),
        members(
            "package_json_infinite_number",
            "INVALID_JSON",
            "number too large",
            lambda: [_package_json(raw=b'{"main": "main.py", "x": 1e999}'), main],
        ),
        members(
            "package_json_nul_in_string",
            "INVALID_JSON",
            "NUL character",
            lambda: [_package_json(raw=b'{"main": "main.py", "name": "a\\u0000b"}'), main],
        ),
        members(
            "package_json_lone_surrogate",
            "INVALID_JSON",
            "unpaired surrogate",
            lambda: [_package_json(raw=b'{"main": "main.py", "name": "\\ud800"}'), main],
        ),
    ]


def _field_family() -> list[BadPackage]:
    def field(
        name: str, config: dict[str, Any], code: str, contains: str, *extra: Member
    ) -> BadPackage:
        return BadPackage(name, _with_config(name, config, *extra), code, contains)

    py = {"main": "main.py"}
    return [
        field(
            "name_not_string",
            {**py, "name": 42},
            "INVALID_FIELD",
            "'name' in package.json must be a string, not a number",
        ),
        field("version_not_string", {**py, "version": 1.5}, "INVALID_FIELD", "'version'"),
        field(
            "description_not_string", {**py, "description": ["a"]}, "INVALID_FIELD", "'description'"
        ),
        field(
            "engines_not_object",
            {**py, "engines": ["python3"]},
            "INVALID_FIELD",
            "'engines' in package.json must be an object, not an array",
        ),
        field(
            "engine_version_not_string",
            {**py, "engines": {"python3": 3.11}},
            "INVALID_FIELD",
            "'engines.python3'",
        ),
        field(
            "args_not_array",
            {**py, "args": {"a": 1}},
            "INVALID_FIELD",
            "'args' in package.json must be an array",
        ),
        field("main_missing", {"name": "x"}, "INVALID_MAIN", "has no 'main'"),
        field(
            "main_not_string",
            {"main": ["main.py"]},
            "INVALID_MAIN",
            "must be a string, not an array",
        ),
        field("main_null", {"main": None}, "INVALID_MAIN", "not null"),
        field("main_empty", {"main": ""}, "INVALID_MAIN", "is empty"),
        field("main_absolute", {"main": "/usr/lib/python3/os.py"}, "INVALID_MAIN", "absolute path"),
        field(
            "main_escapes",
            {"main": "../x.py"},
            "INVALID_MAIN",
            "main '../x.py' escapes the package",
        ),
        field(
            "main_dotdot_inside",
            {"main": "lib/../main.py"},
            "INVALID_MAIN",
            "has a '..' component",
        ),
        field("main_control_character", {"main": "main.py\n"}, "INVALID_MAIN", "control character"),
        field(
            "main_is_folder",
            {"main": "lib"},
            "INVALID_MAIN",
            "main 'lib' is a folder",
            _file("lib/x.py", "x"),
        ),
        field("main_trailing_slash", {"main": "main.py/"}, "INVALID_MAIN", "is a folder"),
        field(
            "main_is_symlink",
            {"main": "link.py"},
            "INVALID_MAIN",
            "is a symlink",
            _symlink("link.py", "main.py"),
        ),
        field(
            "main_not_found",
            {"main": "src/app.py"},
            "MAIN_NOT_FOUND",
            "main 'src/app.py' is not in the package",
        ),
        field("main_wrong_case", {"main": "Main.py"}, "MAIN_NOT_FOUND", "not in the package"),
        field(
            "unknown_language",
            {"main": "run.sh"},
            "UNKNOWN_LANGUAGE",
            "cannot tell how to run",
            _file("run.sh", "echo hi"),
        ),
    ]


def corpus() -> list[BadPackage]:
    """Every refused package, with its code; names are unique and stable (test ids)."""
    entries = [
        *_gzip_family(),
        *_name_family(),
        *_type_family(),
        *_duplicate_family(),
        *_size_family(),
        *_package_json_family(),
        *_field_family(),
    ]
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return entries
