"""Hostile bundles that are small on disk and huge once decompressed.

Each file is a multi-member gzip: a member with the first bytes, one compressed 1 MiB
block of filler repeated, and a member with the rest. ``gzip`` reads the members as one
stream, so 0.9 MB on disk expands to 900 MB. The tar headers are written by hand so any
size, type and field can be declared.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024
BLOCK = 512


def header(
    name: str,
    kind: bytes,
    size: int,
    *,
    size_field: bytes | None = None,
    at: dict[int, bytes] | None = None,
) -> bytes:
    """A ustar header block declaring ``size`` bytes of type ``kind`` (checksum fixed)."""
    b = bytearray(BLOCK)
    b[0 : len(name)] = name.encode()
    b[100:108] = b"0000644\0"
    b[108:116] = b"0000000\0"
    b[116:124] = b"0000000\0"
    b[124:136] = size_field if size_field is not None else b"%011o\0" % size
    b[136:148] = b"00000000000\0"
    b[156:157] = kind
    b[257:265] = b"ustar\x0000"
    for offset, value in (at or {}).items():
        b[offset : offset + len(value)] = value
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a whole number of tar blocks."""
    return data + b"\0" * (-len(data) % BLOCK)


def pax_record(key: str, value: bytes) -> bytes:
    """One ``LEN key=value\\n`` PAX record (LEN counts its own digits)."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def write_expanding(path: Path, head: bytes, filler: bytes, filler_bytes: int, tail: bytes) -> Path:
    """Write ``head`` + ``filler`` repeated to ``filler_bytes`` + ``tail`` as multi-member
    gzip (``filler_bytes`` is a multiple of ``len(filler)``)."""
    copies = max(1, MIB // len(filler))
    block = gzip.compress(filler * copies, compresslevel=9)
    whole, rest = divmod(filler_bytes, copies * len(filler))
    assert rest % len(filler) == 0
    with path.open("wb") as out:
        out.write(gzip.compress(head))
        for _ in range(whole):
            out.write(block)
        out.write(gzip.compress(filler * (rest // len(filler)) + tail))
    return path


def _metadata_bomb(kind: bytes, key: str, size: int) -> Callable[[Path, bytes], Path]:
    """A PAX header (``x`` or global ``g``) of ``size`` bytes holding one ``key`` record,
    before the good archive: exactly the bundle the server signed at 4.4 GB."""

    def make(path: Path, good_tar: bytes) -> Path:
        lead = f"{size} {key}=".encode()
        head = header("PaxHeaders/manifest.json", kind, size) + lead
        tail = b"\n" + b"\0" * (-size % BLOCK) + good_tar
        return write_expanding(path, head, b"a", size - len(lead) - 1, tail)

    return make


def _gnu_long(kind: bytes, size: int) -> Callable[[Path, bytes], Path]:
    def make(path: Path, good_tar: bytes) -> Path:
        head = header("././@LongLink", kind, size)
        tail = b"\0" + b"\0" * (-size % BLOCK) + good_tar
        return write_expanding(path, head, b"a", size - 1, tail)

    return make


def _long_name_chain(count: int) -> Callable[[Path, bytes], Path]:
    def make(path: Path, good_tar: bytes) -> Path:
        link = header("././@LongLink", b"L", 1024) + b"a" * 1023 + b"\0"
        return write_expanding(path, b"", link, count * len(link), good_tar)

    return make


def _old_gnu_sparse(extensions: int) -> Callable[[Path, bytes], Path]:
    """An old GNU sparse member (type S) whose map goes on for ``extensions`` blocks."""

    def make(path: Path, good_tar: bytes) -> Path:
        entry = b"%011o\0%011o\0" % (0, 1)
        head = header("manifest.json", b"S", 1, at={386: entry, 482: b"\1", 483: b"%011o\0" % 1})
        ext = bytearray(BLOCK)
        for i in range(21):
            ext[i * 24 : i * 24 + 24] = entry
        ext[504] = 1
        return write_expanding(path, head, bytes(ext), extensions * BLOCK, good_tar)

    return make


def _sparse_map(entries: int) -> Callable[[Path, bytes], Path]:
    """A GNU sparse 1.0 member: a PAX header, then a map declaring ``entries`` entries."""

    def make(path: Path, good_tar: bytes) -> Path:
        records = b"".join(
            pax_record(k, v)
            for k, v in (
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"payload/app.bin"),
                ("GNU.sparse.realsize", b"1"),
            )
        )
        head = header("PaxHeaders/app", b"x", len(records)) + pad(records)
        line = f"{entries}\n".encode()
        head += header("GNUSparseFile.0/app", b"0", 100 * MIB) + line
        filler = 100 * MIB - len(line) - (100 * MIB - len(line)) % 2
        tail = b"\0" * (100 * MIB - len(line) - filler) + good_tar
        return write_expanding(path, head, b"0\n", filler, tail)

    return make


def _pax_size(size: int) -> Callable[[Path, bytes], Path]:
    def make(path: Path, good_tar: bytes) -> Path:
        record = pax_record("size", str(size).encode())
        head = header("PaxHeaders/manifest.json", b"x", len(record)) + pad(record)
        return write_expanding(path, head, b"\0", 0, good_tar)

    return make


def _many_members(count: int) -> Callable[[Path, bytes], Path]:
    """The good archive's manifest, then ``count`` empty members."""

    def make(path: Path, good_tar: bytes) -> Path:
        manifest_end = BLOCK + BLOCK * -(-int(good_tar[124:135], 8) // BLOCK)
        member = header("payload/extra", b"0", 0)
        return write_expanding(
            path, good_tar[:manifest_end], member, count * BLOCK, good_tar[manifest_end:]
        )

    return make


def _base256_size(path: Path, good_tar: bytes) -> Path:
    size = int(good_tar[124:135], 8)
    field = b"\x80" + b"\0" * 7 + size.to_bytes(4, "big")
    first = header("manifest.json", b"0", 0, size_field=field)
    return write_expanding(path, first, b"\0", 0, good_tar[BLOCK:])


VARIANTS: dict[str, tuple[Callable[[Path, bytes], Path], str]] = {
    "pax-900mb": (_metadata_bomb(b"x", "comment", 900 * 10**6), "too_large"),
    "pax-path-10mb": (_metadata_bomb(b"x", "path", 10 * 10**6), "too_large"),
    "gnu-longname-900mb": (_gnu_long(b"L", 900 * 10**6), "unsupported_member"),
    "gnu-longlink-900mb": (_gnu_long(b"K", 900 * 10**6), "unsupported_member"),
    "gnu-longname-chain-5000": (_long_name_chain(5000), "unsupported_member"),
    "global-pax-10mb": (_metadata_bomb(b"g", "comment", 10 * 10**6), "unsupported_member"),
    "old-gnu-sparse-100k-blocks": (_old_gnu_sparse(100_000), "unsupported_member"),
    "sparse-1.0-map-1e9": (_sparse_map(10**9), "unsupported_member"),
    "pax-size-1e12": (_pax_size(10**12), "too_large"),
    "members-200k": (_many_members(200_000), "unexpected_file"),
    "base-256-size": (_base256_size, "unsupported_member"),
}
"""Hostile variant name -> (writer taking (path, good tar bytes), expected reason)."""
