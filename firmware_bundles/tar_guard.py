"""The one reader every bundle goes through: bounds tar metadata before tarfile sees it.

``tarfile`` reads a PAX extended header or a GNU long name whole into memory, whatever
size the archive declares, and loops over counts the archive declares for sparse files.
A 0.9 MB bundle (gzip of repeated blocks) can therefore declare a 900 MB PAX header and
cost gigabytes to read. :class:`TarGuard` sits between the decompressed stream and
``tarfile.open(mode="r|")``: bytes pass through unchanged while the guard parses every
512-byte header as it goes by, and refuses the archive before ``tarfile`` reads any
metadata block that passes the limits. Because ``tarfile``'s stream reads 10 KiB at a
time, the guard always sees a header before ``tarfile`` acts on it.

What passes: regular files (``0``, NUL) and directories (``5``) with octal size fields,
and PAX extended headers (``x``) of at most ``Limits.max_pax_header_bytes`` that are not
chained, whose records are well formed and carry no ``GNU.sparse.*`` or ``hdrcharset``.
Everything the bundle builder never writes (links, devices, FIFOs, GNU long names and
links, old GNU sparse, global and Solaris PAX headers, base-256 sizes) is refused. The
server's publish path and the agent's verifier share this guard through
:func:`open_guarded`.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from firmware_bundles.errors import BundleError, Reason

BLOCK = 512
_REGULAR = (b"0", b"\0")
_DIRECTORY = b"5"
_PAX = b"x"
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symlink",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
    b"g": "global PAX header",
    b"X": "Solaris extended header",
}


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while reading a bundle (defaults suit Pi-class devices)."""

    max_payload_bytes: int = 4 * 1024**3
    max_members: int = 20_000
    max_archive_overhead: int = 64 * 1024**2  # tar headers, PAX records, padding
    max_pax_header_bytes: int = 16 * 1024
    """One PAX extended header (a long path needs a few hundred bytes)."""
    max_metadata_bytes: int = 1024 * 1024
    """All PAX extended headers of one bundle together."""

    @property
    def max_headers(self) -> int:
        """Tar headers in one bundle: each member may have one PAX header before it."""
        return 2 * self.max_members


class _LimitedReader:
    """File-like view of a stream that raises ``TOO_LARGE`` past ``limit`` bytes."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit - self.consumed + 1
        data = self._inner.read(size)
        self.consumed += len(data)
        if self.consumed > self._limit:
            raise BundleError(Reason.TOO_LARGE, f"bundle expands past the {self._limit}-byte limit")
        return data


def _padded(size: int) -> int:
    return -size % BLOCK


def _octal(field: bytes, what: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise BundleError(
            Reason.UNSUPPORTED_MEMBER, f"tar header with a base-256 {what} (never written here)"
        )
    text = field.split(b"\0", 1)[0].strip()
    if text and not all(48 <= c <= 55 for c in text):
        raise BundleError(Reason.NOT_A_BUNDLE, f"tar header with an invalid {what} field")
    return int(text or b"0", 8)


def _check_checksum(block: bytes) -> None:
    stored = _octal(block[148:156], "checksum")
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
    if stored not in (unsigned, signed):
        raise BundleError(Reason.NOT_A_BUNDLE, "tar header with a bad checksum")


def _name(block: bytes) -> str:
    return block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


class TarGuard:
    """A pass-through reader that refuses tar metadata past ``limits`` as it streams by.

    ``read`` returns exactly what the inner stream gives; the guard keeps at most one
    header (512 bytes) or one PAX header (``max_pax_header_bytes``) of its own.
    """

    def __init__(self, inner: IO[bytes] | _LimitedReader, limits: Limits) -> None:
        self._inner = inner
        self._limits = limits
        self._buf = bytearray()
        self._want = BLOCK  # bytes to collect: a header, or a PAX header's records
        self._skip = 0  # member data (and padding) to let through unparsed
        self._in_pax = False
        self._after_pax = False
        self._pax_size: int | None = None  # a PAX ``size`` record for the next member
        self._ended = False
        self.headers = 0
        self.metadata_bytes = 0

    def read(self, size: int = -1) -> bytes:
        """Read from the inner stream, check the headers it holds, return it unchanged."""
        data = self._inner.read(size)
        if not self._ended:
            self._feed(memoryview(data))
        return data

    def _feed(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end and not self._ended:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._want - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._want:
                chunk = bytes(self._buf)
                self._buf.clear()
                if self._in_pax:
                    self._end_pax(chunk)
                else:
                    self._header(chunk)

    def _header(self, block: bytes) -> None:
        if not block.strip(b"\0"):
            self._ended = True  # end-of-archive marker; the caller checks what follows
            return
        _check_checksum(block)
        self.headers += 1
        if self.headers > self._limits.max_headers:
            raise BundleError(Reason.TOO_LARGE, f"more than {self._limits.max_headers} tar headers")
        kind = block[156:157]
        size = _octal(block[124:136], "size")
        if kind == _PAX:
            self._start_pax(block, size)
            return
        if kind not in (*_REGULAR, _DIRECTORY):
            what = _TYPE_NAMES.get(kind, f"tar type {kind!r}")
            raise BundleError(
                Reason.UNSUPPORTED_MEMBER,
                f"member {_name(block)!r} is a {what}; bundles hold only files and directories",
            )
        # tarfile skips data only for regular files (a NUL-type name ending in / is a dir)
        is_dir = kind == _DIRECTORY or (kind == b"\0" and _name(block).endswith("/"))
        data = 0 if is_dir else (size if self._pax_size is None else self._pax_size)
        if data > self._limits.max_payload_bytes:
            raise BundleError(
                Reason.TOO_LARGE,
                f"member {_name(block)!r} declares {data} bytes, past the "
                f"{self._limits.max_payload_bytes}-byte limit",
            )
        self._skip = data + _padded(data)
        self._after_pax = False
        self._pax_size = None

    def _start_pax(self, block: bytes, size: int) -> None:
        limits = self._limits
        if self._after_pax:
            raise BundleError(Reason.UNSUPPORTED_MEMBER, "a PAX header follows another one")
        if size > limits.max_pax_header_bytes:
            raise BundleError(
                Reason.TOO_LARGE,
                f"PAX header of {size} bytes passes the {limits.max_pax_header_bytes}-byte limit",
            )
        self.metadata_bytes += size
        if self.metadata_bytes > limits.max_metadata_bytes:
            raise BundleError(
                Reason.TOO_LARGE,
                f"PAX headers pass the {limits.max_metadata_bytes}-byte limit in total",
            )
        self._in_pax = True
        self._want = size
        if size == 0:
            self._end_pax(b"")

    def _end_pax(self, records: bytes) -> None:
        self._pax_size = self._parse_pax(records)
        self._in_pax = False
        self._after_pax = True
        self._want = BLOCK
        self._skip = _padded(len(records))

    def _parse_pax(self, buf: bytes) -> int | None:
        """Check every ``LEN key=value\\n`` record; return the ``size`` record, if any."""
        pos, size = 0, None
        while pos < len(buf):
            space = buf.find(b" ", pos, pos + 12)
            digits = buf[pos:space] if space > pos else b""
            if not digits.isdigit():
                raise BundleError(Reason.NOT_A_BUNDLE, "malformed PAX record")
            stop = pos + int(digits)
            key, eq, value = buf[space + 1 : stop - 1].partition(b"=")
            if stop > len(buf) or stop <= space + 1 or buf[stop - 1 : stop] != b"\n" or not eq:
                raise BundleError(Reason.NOT_A_BUNDLE, "malformed PAX record")
            if key.startswith(b"GNU.sparse.") or key == b"hdrcharset":
                raise BundleError(
                    Reason.UNSUPPORTED_MEMBER,
                    f"PAX record {key.decode('ascii', 'replace')!r} (sparse files and "
                    "other header charsets are never written here)",
                )
            if key == b"size":
                if not value.isdigit() or len(value) > 20:
                    raise BundleError(Reason.NOT_A_BUNDLE, "PAX size record is not a number")
                size = int(value)
                if size > self._limits.max_payload_bytes:
                    raise BundleError(
                        Reason.TOO_LARGE,
                        f"PAX size of {size} bytes passes the "
                        f"{self._limits.max_payload_bytes}-byte limit",
                    )
            pos = stop
        return size


@dataclass
class GuardedArchive:
    """An open bundle: ``tar`` iterates members; ``stream`` is what is left after them."""

    tar: tarfile.TarFile
    stream: TarGuard


@contextmanager
def open_guarded(
    path: Path, limits: Limits, expand_limit: int | None = None
) -> Iterator[GuardedArchive]:
    """Open the gzip tar at ``path`` through :class:`TarGuard` for streaming reads.

    The decompressed stream is refused past ``expand_limit`` bytes (default: payload
    limit plus archive overhead). tarfile, zlib and gzip errors become ``NOT_A_BUNDLE``.

    Raises:
        BundleError: unreadable file, hostile metadata, or not a gzip tar.
    """
    path = Path(path)
    if expand_limit is None:
        expand_limit = limits.max_payload_bytes + limits.max_archive_overhead
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise BundleError(Reason.NOT_A_BUNDLE, f"cannot read {path}: {exc.strerror}") from None
    stream = TarGuard(_LimitedReader(gzip.GzipFile(fileobj=raw, mode="rb"), expand_limit), limits)
    try:
        with raw, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            yield GuardedArchive(tar, stream)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleError(Reason.NOT_A_BUNDLE, f"{path} is not a valid bundle: {exc}") from None
