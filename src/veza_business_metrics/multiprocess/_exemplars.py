"""Exemplars in multiprocess mode: one file of slots per process, written and read whole.

prometheus_client keeps no exemplar in multiprocess mode (its ``set_exemplar`` is a
no-op there), so each process writes its own in ``exemplars_<pid>.bin`` beside its
counter file: a header (magic, version, slots used), then one 256-byte slot per series,
in the order the process first attached an exemplar to it. A slot holds its series'
key, then two halves, each a whole exemplar (a sequence number, the value, the time,
the trace and span ids) and a CRC-32 of the key and the half. A write fills the half
that does not hold the newest exemplar, in one copy, so that a writer killed at any
point leaves the other half whole, and a reader keeps the valid half with the higher
sequence number: no reader ever sees a torn exemplar.

The only prometheus_client internals it relies on are the counter child's ``_name``
(without ``_total``), ``_labelnames`` and ``_labelvalues``, which name its series.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import mmap
import os
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from prometheus_client import Counter

_MAGIC: Final = b"VBEX"
_VERSION: Final = 1
_HEADER: Final = struct.Struct("<4sII")  # magic, version, slots used
_HEADER_SIZE: Final = 16
_SLOT_SIZE: Final = 256
_KEY_LENGTH: Final = struct.Struct("<H")
MAX_KEY_BYTES: Final = 126
_HALF: Final = struct.Struct("<QddQQQ")  # sequence, value, time, trace id (2 x 64 bits), span id
_HALF_SIZE: Final = 64
_CHECKSUM: Final = struct.Struct("<I")
# Far more than the business series (6 outcomes, 4 statuses, a deletion counter, and two
# per ISO 4217 currency): a process never fills it. The file is sparse, so the slots
# that no series uses take no memory.
CAPACITY: Final = 1024
FILE_SIZE: Final = _HEADER_SIZE + CAPACITY * _SLOT_SIZE
_MASK_64: Final = 2**64 - 1
LOG: Final = logging.getLogger(__package__)
# Keys already checked, with whether they name a series; bounded, since anyone who can
# write to the directory can write any key.
_MAX_CHECKED_KEYS: Final = 10_000
_checked_keys: dict[bytes, bool] = {}


class Stored(NamedTuple):
    """One exemplar as a file holds it, newest first when sorted by time, then sequence."""

    timestamp: float
    sequence: int
    value: float
    trace_id: int
    span_id: int


class BadExemplarFileError(Exception):
    """A file of exemplars that this release did not write or cannot read."""


def key_of(child: Counter) -> str:
    """Return the series key under which the exemplars of ``child`` are stored.

    Args:
        child: A counter, or one of its labelled children.
    """
    name: str = child._name  # noqa: SLF001
    labels = dict(zip(child._labelnames, child._labelvalues, strict=True))  # noqa: SLF001
    return json.dumps([name, name + "_total", labels], sort_keys=True, separators=(",", ":"))


def file_name(pid: int) -> str:
    return f"exemplars_{pid}.bin"


class Writer:
    """Write each series' newest exemplar of this process to its file.

    The file is opened at the first write, and again at the first write after a fork,
    in the directory that ``PROMETHEUS_MULTIPROC_DIR`` names then. If it cannot be
    opened or grown, the process logs why once and keeps no more exemplars: its events
    are still counted, and no ``record_*`` call fails because of an exemplar.
    """

    def __init__(self) -> None:
        """Open nothing yet."""
        self._forget()
        os.register_at_fork(after_in_child=self.after_fork_in_child)

    def after_fork_in_child(self) -> None:
        """Let go of the parent's file, which the child must never write to."""
        if self._map is not None:
            self._map.close()  # the child's mapping only
        if self._descriptor is not None:
            os.close(self._descriptor)
        self._forget()

    def _forget(self) -> None:
        # A fork may have copied the lock held by a thread that the child does not have.
        self._lock = threading.RLock()
        self._map: mmap.mmap | None = None
        self._descriptor: int | None = None
        # Each series' slot offset, the sequence of its newest exemplar, and the CRC of
        # its key, which every half's CRC starts from.
        self._slots: dict[str, tuple[int, int, int]] = {}
        # The thread in the middle of a write, if any.
        self._writing: int | None = None
        # The process that opened the file, or None.
        self._pid: int | None = None
        self._given_up = False

    def write(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None:
        """Make the exemplar the newest of the series ``key`` in this process's file.

        Args:
            key: What :func:`key_of` returned for the series.
            value: The increment.
            trace_id: The span's trace id, below 2**128.
            span_id: The span's id, below 2**64.
            timestamp: When the increment happened, in seconds since the epoch.
        """
        # A server that forks without running Python's fork hooks, as uWSGI does unless
        # told otherwise, gives its workers the master's writer: each would write to the
        # master's file, a copy of its slots each.
        if self._pid is not None and self._pid != os.getpid():
            self.after_fork_in_child()
        thread = threading.get_ident()
        # A signal handler that records in the middle of its thread's write would find
        # the writer's state half changed: its exemplar is dropped, its count is not.
        if self._given_up or self._writing == thread:
            return
        # Reentrant, so that a handler that runs after the lock is taken, or before it
        # is let go, but outside the write, neither deadlocks nor is dropped.
        with self._lock:
            self._writing = thread
            try:
                self._write(key, value, trace_id, span_id, timestamp)
            except OSError as error:
                self._given_up = True
                LOG.warning(
                    "Keeping no more trace exemplars in process %d, whose events are"
                    " still counted: %s",
                    os.getpid(),
                    error,
                )
            finally:
                self._writing = None

    def _write(
        self, key: str, value: float, trace_id: int, span_id: int, timestamp: float
    ) -> None:
        if self._map is None:
            self._open()
        slot = self._slots.get(key)
        if slot is None:
            slot = self._add(key)
            if slot is None:
                return
        offset, sequence, key_checksum = slot
        sequence += 1
        half = _HALF.pack(sequence, value, timestamp, trace_id >> 64, trace_id & _MASK_64, span_id)
        checksum = _CHECKSUM.pack(zlib.crc32(half, key_checksum))
        start = offset + _SLOT_SIZE // 2 + (sequence & 1) * _HALF_SIZE
        self._map[start : start + len(half) + len(checksum)] = half + checksum  # type: ignore[index]
        self._slots[key] = offset, sequence, key_checksum

    def _open(self) -> None:
        # prometheus_client set it from the lower-case name, if need be, when it created
        # the counters' values, which it did before any exemplar.
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory is None:
            raise FileNotFoundError(errno.ENOENT, "PROMETHEUS_MULTIPROC_DIR is not set")
        path = os.path.join(directory, file_name(os.getpid()))  # noqa: PTH118
        # Kept open for the process's life: a merge sees in /proc that the file is in use.
        # Never through a link, which could make it write over any file.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            self._map_file(descriptor)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        self._pid = os.getpid()

    def _map_file(self, descriptor: int) -> None:
        os.fchmod(descriptor, 0o644)
        # A process that had this pid before may have left its exemplars, not merged
        # yet: they are kept, and this process goes on after their slots.
        data = os.pread(descriptor, FILE_SIZE, 0)
        try:
            stored = read(data) if data.startswith(_MAGIC) else None
        except BadExemplarFileError:
            stored = None
        if stored is None:
            # New, or damaged: started again empty, and sparse, which writing zeros is not.
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, _HEADER.pack(_MAGIC, _VERSION, 0), 0)
            stored = {}
        os.ftruncate(descriptor, FILE_SIZE)
        os.posix_fallocate(descriptor, 0, _HEADER_SIZE)
        self._map = mmap.mmap(descriptor, FILE_SIZE)
        for index, key in enumerate(_keys(self._map)):
            newest = stored.get(key)
            self._slots[key] = (
                _HEADER_SIZE + index * _SLOT_SIZE,
                0 if newest is None else newest.sequence,
                zlib.crc32(key.encode()),
            )

    def _add(self, key: str) -> tuple[int, int, int] | None:
        assert self._map is not None  # noqa: S101  _open() ran
        encoded = key.encode()
        used = len(self._slots)
        if len(encoded) > MAX_KEY_BYTES or used >= CAPACITY:
            return None
        offset = _HEADER_SIZE + used * _SLOT_SIZE
        # A page of a sparse file is allocated when first written: on a full tmpfs, that
        # write through the map would kill the process with SIGBUS. Allocated first, a
        # full file system raises OSError instead.
        assert self._descriptor is not None  # noqa: S101  _open() ran
        os.posix_fallocate(self._descriptor, offset, _SLOT_SIZE)
        self._map[offset : offset + _KEY_LENGTH.size + len(encoded)] = (
            _KEY_LENGTH.pack(len(encoded)) + encoded
        )
        # Published after its key: a reader never reads past the slots used.
        self._map[8:12] = struct.pack("<I", used + 1)
        slot = self._slots[key] = offset, 0, zlib.crc32(encoded)
        return slot


def _keys(data: mmap.mmap) -> list[str]:
    (_, _, used) = _HEADER.unpack_from(data)
    return [
        _key_at(data, _HEADER_SIZE + index * _SLOT_SIZE).decode("utf-8", "replace")
        for index in range(used)
    ]


def _key_at(data: mmap.mmap | bytes, offset: int) -> bytes:
    (length,) = _KEY_LENGTH.unpack_from(data, offset)
    start = offset + _KEY_LENGTH.size
    return bytes(data[start : start + min(length, MAX_KEY_BYTES)])


def read(data: bytes) -> dict[str, Stored]:
    """Return the newest whole exemplar of each series in the contents of a file.

    A slot with no whole half (its first write was cut short) or an unreadable key is
    left out.

    Raises:
        BadExemplarFileError: If the header is not this release's, or counts more slots
            than the file holds.
    """
    # A writer killed between creating its file and writing the header leaves it empty,
    # or sized and all zeros: it wrote no exemplar yet.
    if not data.strip(b"\0"):
        return {}
    if len(data) < _HEADER_SIZE:
        msg = "it is shorter than its header"
        raise BadExemplarFileError(msg)
    magic, version, used = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        msg = f"its header {bytes(data[:8])!r} is not that of version {_VERSION}"
        raise BadExemplarFileError(msg)
    if used > CAPACITY or _HEADER_SIZE + used * _SLOT_SIZE > len(data):
        msg = f"it counts {used} slots, more than its {len(data)} bytes hold"
        raise BadExemplarFileError(msg)
    stored = {}
    for index in range(used):
        offset = _HEADER_SIZE + index * _SLOT_SIZE
        encoded = _key_at(data, offset)
        newest = _newest_half(data, offset, zlib.crc32(encoded))
        # A half is whole only if its checksum, which starts from the key's, matches;
        # but anyone who can write to the directory can write a whole slot.
        if newest is not None and _names_a_series(encoded):
            stored[encoded.decode()] = newest
    return stored


def _names_a_series(key: bytes) -> bool:
    """Tell whether ``key`` is the JSON of ``[metric name, sample name, labels]``."""
    checked = _checked_keys.get(key)
    if checked is None:
        try:
            metric_name, name, labels = json.loads(key)
        except (ValueError, TypeError):  # not UTF-8 nor JSON, or not three items
            checked = False
        else:
            checked = (
                type(metric_name) is str
                and type(name) is str
                and type(labels) is dict
                and all(type(k) is str and type(v) is str for k, v in labels.items())
            )
        if len(_checked_keys) >= _MAX_CHECKED_KEYS:
            _checked_keys.clear()
        _checked_keys[key] = checked
    return checked


def _newest_half(data: bytes, offset: int, key_checksum: int) -> Stored | None:
    """Return the newer of the slot's whole halves, or None if neither is whole."""
    newest = None
    for half in (offset + _SLOT_SIZE // 2, offset + _SLOT_SIZE // 2 + _HALF_SIZE):
        body = data[half : half + _HALF.size]
        (checksum,) = _CHECKSUM.unpack_from(data, half + _HALF.size)
        if zlib.crc32(body, key_checksum) == checksum:
            sequence, value, timestamp, high, low, span_id = _HALF.unpack(body)
            whole = sequence and math.isfinite(value) and math.isfinite(timestamp)
            if whole and (newest is None or sequence > newest.sequence):
                newest = Stored(timestamp, sequence, value, high << 64 | low, span_id)
    return newest


def read_file(path: str | os.PathLike[str]) -> dict[str, Stored]:
    """Return what :func:`read` returns of the file at ``path``, reading only its slots used.

    Raises:
        BadExemplarFileError: As :func:`read` does.
    """
    with open(path, "rb") as file:  # noqa: PTH123
        header = file.read(_HEADER_SIZE)
        used = _HEADER.unpack_from(header)[2] if len(header) == _HEADER_SIZE else 0
        return read(header + file.read(min(used, CAPACITY) * _SLOT_SIZE))


# The one writer of this process, which the traced children of every recorder share.
writer: Final = Writer()
