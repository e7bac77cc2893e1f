"""The files: their names, prometheus_client's format, the archives' format, exact sums.

The bottom layer of the multiprocess package, which knows these prometheus_client
internals, tested on every minor release from 0.20 on: the file names
``<type>_<pid>.db`` and ``gauge_<mode>_<pid>.db``; the file format (a 4-byte used
length, 4 bytes of padding, then entries of a 4-byte key length, the UTF-8 key padded
with spaces to 8 bytes, a value and a timestamp, both doubles; readers stop at the used
length) and its keys, the JSON of ``[metric name, sample name, labels, help]``; the
additivity of counter, histogram and summary values per key; the live gauge modes,
``live*``; and ``MultiProcessCollector``'s ``_read_metrics`` and ``_accumulate_metrics``,
and its ``_path``, which the public face reads. It takes no lock: its callers hold the
directory's.

The exemplars, which prometheus_client does not keep in multiprocess mode, are in files
of this library's own (``_exemplars``); the counter archive keeps those of merged
processes, the newest of each series.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import uuid
import zlib
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from prometheus_client import multiprocess as upstream
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar

from veza_business_metrics._errors import MultiprocessError
from veza_business_metrics.multiprocess import _exemplars

if TYPE_CHECKING:
    from collections.abc import Iterable

LOG: Final = logging.getLogger(__package__)
ADDITIVE: Final = ("counter", "histogram", "summary")
PROCESS_FILE: Final = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db")
LIVE_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.db")
LIVE_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_\d+\.db")
CLAIMED_FILE: Final = re.compile(r"(counter|histogram|summary)_(\d+)\.([0-9a-f]{32})\.merging")
CLAIMED_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_(\d+)\.[0-9a-f]{32}\.merging")
TEMPORARY_ARCHIVE: Final = re.compile(r"(counter|histogram|summary)_archive\.[0-9a-f]{32}\.tmp")
EXEMPLAR_FILE: Final = re.compile(r"exemplars_(\d+)\.bin")
CLAIMED_EXEMPLAR_FILE: Final = re.compile(r"exemplars_(\d+)\.([0-9a-f]{32})\.merging")
# Every name that prometheus_client or this package writes and clear() may delete: never
# another program's, since the directory may sit among others on a tmpfs.
WRITTEN: Final = re.compile(
    "|".join(
        pattern.pattern
        for pattern in (
            PROCESS_FILE,
            CLAIMED_FILE,
            CLAIMED_GAUGE_FILE,
            TEMPORARY_ARCHIVE,
            EXEMPLAR_FILE,
            CLAIMED_EXEMPLAR_FILE,
        )
    )
    + r"|(?:counter|histogram|summary)_archive\.db"
)
PROC: Final = Path("/proc")
_ARCHIVE_VERSION: Final = 2
_HEADER: Final = 8  # prometheus_client's used length and padding
# The archive keeps prometheus_client's format up to the used length, so that its reader
# reads it like a process's file; the archive's own record follows, after this mark, and
# a CRC-32 of everything before it ends the file.
_RECORD_MARK: Final = b"VBMA"
_CHECKSUM: Final = struct.Struct("<I")
# Keys already checked, with whether their values must be at least 0; bounded, since a
# process may see many keys in its life.
_MAX_CHECKED_KEYS: Final = 100_000
_checked_keys: dict[tuple[str, str], bool] = {}
# Corrupt live files already logged, so that each scrape does not log them again.
_reported: set[str] = set()
# What the name of a file set aside says of it.
_TRUNCATED: Final = "truncated"
_BAD_KEY: Final = "bad-key"
_BAD_VALUE: Final = "bad-value"


class CorruptFileError(Exception):
    """A file that prometheus_client's reader would misread or fail on."""

    def __init__(self, slug: str, reason: str) -> None:
        super().__init__(reason)
        self.slug = slug


def collect(directory: Path) -> Iterable[Metric]:
    names = []
    gauges = []
    for file in os.scandir(directory):
        if not file.is_file(follow_symlinks=False):
            continue
        # prometheus_client creates a file empty, then sizes it: until then it holds
        # nothing, and its reader would fail on it.
        if file.name.startswith("gauge_") and file.name.endswith(".db") and file.stat().st_size:
            if _checked(file.path, "gauge") is not None:
                gauges.append(file.path)
        else:
            names.append(file.name)
    metrics: dict[str, Metric] = upstream.MultiProcessCollector._read_metrics(gauges)  # type: ignore[no-untyped-call]  # noqa: SLF001
    samples: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], list[float]] = {}
    values, exemplars = _additive_values(directory, names)
    for (kind, key), parts in values.items():
        metric_name, name, labels, help_text = json.loads(key)
        if metric_name not in metrics:
            metrics[metric_name] = Metric(metric_name, help_text, kind)
        # Keys that differ only by help text name one series: sum them exactly too.
        series = (metric_name, kind, name, tuple(sorted(labels.items())))
        samples.setdefault(series, []).extend(parts)
    for (metric_name, _, name, labels), parts in samples.items():
        metrics[metric_name].add_sample(name, labels, exact_sum(parts))  # type: ignore[arg-type]
    families: Iterable[Metric] = upstream.MultiProcessCollector._accumulate_metrics(metrics, True)  # type: ignore[no-untyped-call]  # noqa: FBT003, SLF001
    if exemplars:
        _attach(families, exemplars)
    return families


def _attach(families: Iterable[Metric], exemplars: dict[str, _exemplars.Stored]) -> None:
    """Give each sample that has an exemplar in ``exemplars`` the newest one."""
    by_sample: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Exemplar]] = {}
    for key, stored in exemplars.items():
        # Only keys of that shape are read from a file of exemplars, or kept in an archive.
        metric_name, name, labels = json.loads(key)
        series = (name, tuple(sorted(labels.items())))
        labelled = {"trace_id": f"{stored.trace_id:032x}", "span_id": f"{stored.span_id:016x}"}
        exemplar = Exemplar(labelled, stored.value, stored.timestamp)
        by_sample.setdefault(metric_name, {})[series] = exemplar
    for family in families:
        wanted = by_sample.get(family.name)
        if wanted:
            family.samples = [
                sample._replace(
                    exemplar=wanted.get((sample.name, tuple(sorted(sample.labels.items()))))
                )
                for sample in family.samples
            ]


def newest(stored: dict[str, _exemplars.Stored], more: dict[str, _exemplars.Stored]) -> None:
    """Keep in ``stored`` each series' newer exemplar of the two, by time then sequence."""
    for key, exemplar in more.items():
        kept = stored.get(key)
        if kept is None or (exemplar.timestamp, exemplar.sequence) > (
            kept.timestamp,
            kept.sequence,
        ):
            stored[key] = exemplar


def _checked(path: str, kind: str) -> dict[str, float] | None:
    """Return what ``entries`` returns, or None for a file that does not parse, logged once."""
    try:
        return entries(path, kind)
    except CorruptFileError as error:
        _report_once(
            path,
            "Skipped %s in every scrape: %s. Its process's counts are unknowable; it is moved"
            " aside as *.corrupt once the process exits",
            error,
        )
        return None


def _report_once(path: str, message: str, error: Exception) -> None:
    """Log ``message`` about the corrupt file ``path`` unless this process did already."""
    if path not in _reported:
        if len(_reported) < _MAX_CHECKED_KEYS:
            _reported.add(path)
        LOG.error(message, path, error)


def _additive_values(
    directory: Path, names: list[str]
) -> tuple[dict[tuple[str, str], list[float]], dict[str, _exemplars.Stored]]:
    """Return what the archives and the files ``names`` hold of each additive key.

    Returns:
        The values of each kind and key, and the newest exemplar of each series.
    """
    absorbed: dict[str, set[str]] = {}
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    exemplars: dict[str, _exemplars.Stored] = {}
    for kind in ADDITIVE:
        archive = read_archive(directory, kind)
        absorbed[kind] = archive.absorbed
        for key, parts in archive.partials.items():
            values[kind, key] += parts
        newest(exemplars, archive.exemplars)
    for name in names:
        claim = CLAIMED_FILE.fullmatch(name)
        exemplar_claim = CLAIMED_EXEMPLAR_FILE.fullmatch(name)
        path = os.path.join(directory, name)  # noqa: PTH118  a scrape's hot loop
        if LIVE_FILE.fullmatch(name) or (
            claim and claim[3] not in absorbed[claim[1]] and not given_back(directory, name)
        ):
            kind = name.partition("_")[0]
            for key, value in (_checked(path, kind) or {}).items():
                values[kind, key].append(value)
        elif EXEMPLAR_FILE.fullmatch(name) or (
            exemplar_claim
            and exemplar_claim[2] not in absorbed["counter"]
            and not given_back(directory, name)
        ):
            newest(exemplars, _checked_exemplars(path))
    return values, exemplars


def _checked_exemplars(path: str) -> dict[str, _exemplars.Stored]:
    """Return what ``_exemplars.read_file`` returns, or nothing for a bad file, logged once."""
    try:
        return _exemplars.read_file(path)
    except _exemplars.BadExemplarFileError as error:
        _report_once(
            path,
            "Skipped the exemplars of %s in every scrape: %s. It is moved aside as *.corrupt"
            " once its process exits",
            error,
        )
        return {}


def entries(path: str | os.PathLike[str], kind: str) -> dict[str, float]:
    """Return each key of a prometheus_client file with its value, checked.

    Raises:
        CorruptFileError: If the file does not parse as prometheus_client writes it, or
            holds an additive value that is not finite, or a negative count.
    """
    with open(path, "rb") as file:  # noqa: PTH123
        data = file.read()
    used = _used_length(data)
    values = {}
    position = _HEADER
    while position < used:
        (length,) = struct.unpack_from("i", data, position) if position + 4 <= used else (0,)
        end = position + 4 + length + (8 - (length + 4) % 8) + 16
        if length <= 0 or end > used:
            msg = f"an entry at byte {position} runs past the used length {used}"
            raise CorruptFileError(_TRUNCATED, msg)
        try:
            key = data[position + 4 : position + 4 + length].decode("utf-8")
        except UnicodeDecodeError:
            msg = f"the key at byte {position} is not UTF-8"
            raise CorruptFileError(_BAD_KEY, msg) from None
        (value,) = struct.unpack_from("d", data, end - 16)
        counts = _checked_keys.get((kind, key))
        if counts is None:
            counts = _check_key(kind, key)
        if kind != "gauge" and (not math.isfinite(value) or (counts and value < 0)):
            msg = f"{key} holds {value!r}"
            raise CorruptFileError(_BAD_VALUE, msg)
        if key in values:
            msg = f"{key} appears twice"
            raise CorruptFileError(_BAD_KEY, msg)
        values[key] = value
        position = end
    return values


def _used_length(data: bytes) -> int:
    """Return the used length of a prometheus_client file's contents; 8 if it holds nothing.

    Raises:
        CorruptFileError: If it is shorter than its header, or its used length is outside
            the file.
    """
    # prometheus_client creates a file empty, sizes it, then writes the used length: a
    # process killed in between leaves no byte, or zeros, which its reader reads as
    # nothing too.
    if not data:
        return _HEADER
    if len(data) < _HEADER:
        raise CorruptFileError(_TRUNCATED, "it is shorter than its header")
    (used,) = struct.unpack_from("i", data)
    if used == 0:
        return _HEADER
    if not _HEADER <= used <= len(data):
        msg = f"its used length {used} is outside the file's {len(data)} bytes"
        raise CorruptFileError(_TRUNCATED, msg)
    return int(used)


def _check_key(kind: str, key: str) -> bool:
    """Check ``key`` as prometheus_client writes it; return whether it counts events.

    Raises:
        CorruptFileError: If it is not the JSON of ``[metric name, sample name, labels,
            help]`` that the collectors read.
    """
    try:
        metric_name, name, labels, help_text = json.loads(key)
    except ValueError:
        msg = f"the key {key[:100]!r} is not [metric, sample, labels, help] in JSON"
        raise CorruptFileError(_BAD_KEY, msg) from None
    if not (
        isinstance(metric_name, str)
        and metric_name
        and isinstance(name, str)
        and name.startswith(metric_name)
        and isinstance(help_text, str)
        and isinstance(labels, dict)
        and all(isinstance(value, str) for value in labels.values())
    ):
        msg = f"the key {key[:100]!r} is not [metric, sample, labels, help]"
        raise CorruptFileError(_BAD_KEY, msg)
    if kind == "histogram" and name.endswith("_bucket"):
        try:
            float(labels["le"])
        except (KeyError, ValueError):
            msg = f"the bucket {key[:100]!r} has no numeric le label"
            raise CorruptFileError(_BAD_KEY, msg) from None
    counts = kind == "counter" or name.endswith(("_bucket", "_count"))
    if len(_checked_keys) >= _MAX_CHECKED_KEYS:
        _checked_keys.clear()
    _checked_keys[kind, key] = counts
    return counts


def exact_sum(parts: list[float]) -> float:
    """Return the correctly rounded sum of ``parts``, or their plain sum if it has none."""
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):  # past the largest double, or inf and -inf
        return sum(parts)


def add_exactly(partials: list[float], value: float) -> list[float]:
    """Add ``value`` to ``partials``, doubles whose exact sum is a running total.

    It is Shewchuk's algorithm, which ``math.fsum`` runs inside: the partials never
    overlap, so their exact sum, which ``math.fsum`` rounds correctly, loses nothing.
    """
    total = value
    kept = []
    for partial in partials:
        high, low = (total, partial) if abs(total) >= abs(partial) else (partial, total)
        total = high + low
        error = low - (total - high)
        if error:
            kept.append(error)
    # Past the largest double no exact sum exists.
    return [*kept, total] if math.isfinite(total) else [exact_sum([*partials, value])]


def archive_path(directory: Path, kind: str) -> Path:
    return directory / f"{kind}_archive.db"


class Archive(NamedTuple):
    """What an archive holds: partial sums, the merges absorbed, the newest exemplars."""

    partials: dict[str, list[float]]
    absorbed: set[str]
    exemplars: dict[str, _exemplars.Stored]


def read_archive(directory: Path, kind: str) -> Archive:
    """Return what the archive of ``kind`` holds, empty if there is none yet.

    Raises:
        MultiprocessError: If the archive is damaged, not this module's, or of another
            version.
    """
    path = archive_path(directory, kind)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Archive({}, set(), {})
    body = data[: -_CHECKSUM.size]
    used = struct.unpack_from("i", data)[0] if len(data) >= _HEADER else 0
    if used < _HEADER or data[used : used + len(_RECORD_MARK)] != _RECORD_MARK:
        msg = f"{path} is not an archive written by veza_business_metrics"
        raise MultiprocessError(msg)
    if len(data) < used + len(_RECORD_MARK) + 4 + _CHECKSUM.size or (
        zlib.crc32(body) != _CHECKSUM.unpack_from(data, len(body))[0]
    ):
        msg = (
            f"{path} is damaged: its checksum does not match its content, so its counts"
            " cannot be trusted; see the multiprocess page of the documentation"
        )
        raise MultiprocessError(msg)
    (length,) = struct.unpack_from("I", data, used + len(_RECORD_MARK))
    start = used + len(_RECORD_MARK) + 4
    record = json.loads(data[start : start + length])
    if (version := record.get("version")) != _ARCHIVE_VERSION:
        msg = (
            f"{path} is an archive of version {version!r};"
            f" this release reads version {_ARCHIVE_VERSION}"
        )
        raise MultiprocessError(msg)
    # Written since exemplars were kept; a release before them neither writes nor reads it.
    exemplars = {
        key: _exemplars.Stored(timestamp, sequence, value, int(trace_id, 16), int(span_id, 16))
        for key, (timestamp, sequence, value, trace_id, span_id) in record.get(
            "exemplars", {}
        ).items()
    }
    return Archive(record["partials"], set(record["absorbed"]), exemplars)


def encode(
    partials: dict[str, list[float]],
    absorbed: set[str],
    exemplars: dict[str, _exemplars.Stored] | None = None,
) -> bytes:
    data = bytearray(_HEADER)
    for key, parts in partials.items():
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        data += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, exact_sum(parts), 0.0)
    struct.pack_into("i", data, 0, len(data))
    record: dict[str, object] = {
        "version": _ARCHIVE_VERSION,
        "absorbed": sorted(absorbed),
        "partials": partials,
    }
    if exemplars:
        record["exemplars"] = {
            key: [e.timestamp, e.sequence, e.value, f"{e.trace_id:032x}", f"{e.span_id:016x}"]
            for key, e in exemplars.items()
        }
    encoded_record = json.dumps(record).encode("utf-8")
    data += _RECORD_MARK + struct.pack("I", len(encoded_record)) + encoded_record
    return bytes(data + _CHECKSUM.pack(zlib.crc32(data)))


def file_names(directory: Path) -> list[str]:
    """Return the names of the regular files in ``directory``: a folder is never merged."""
    return [entry.name for entry in os.scandir(directory) if entry.is_file(follow_symlinks=False)]


def given_back(directory: Path, claim: str) -> bool:
    """Tell whether ``claim`` is also its live name, given back by a merge since killed."""
    try:
        live = identity(live_name(directory, claim).stat())
    except FileNotFoundError:
        return False
    return live == identity((directory / claim).stat())


def live_name(directory: Path, claim: str) -> Path:
    stem = claim.partition(".")[0]
    return directory / f"{stem}.{'bin' if stem.startswith('exemplars_') else 'db'}"


def pid_of(claim: str) -> int:
    return int(claim.partition(".")[0].rpartition("_")[2])


def identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def set_aside(directory: Path, claim: str, error: CorruptFileError) -> None:
    """Rename the corrupt ``claim`` to a name that no reader reads, saying why; log it."""
    corrupt = f"{claim.partition('.')[0]}.{error.slug}.{uuid.uuid4().hex[:8]}.corrupt"
    (directory / claim).rename(directory / corrupt)
    lost = "exemplars" if claim.startswith("exemplars_") else "counts"
    LOG.error(
        "Moved %s aside as %s instead of merging it: %s. Its process's %s are lost;"
        " every other total is intact. Keep it to investigate, then delete it",
        live_name(directory, claim),
        directory / corrupt,
        error,
        lost,
    )


def sync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
