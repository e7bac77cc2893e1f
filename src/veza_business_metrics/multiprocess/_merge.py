"""The merge: claims, liveness, merging into the archives, and what was put off.

A merge never loses or repeats a count, even when killed at any point: it claims the
files of processes that are gone by renaming them, checks them, writes the new archive
beside the old one and replaces it, then unlinks the claims. A merge that waited
``MERGE_TIMEOUT`` in vain for the lock is put off until this process's next merge or
scrape of the directory.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Final

from veza_business_metrics.multiprocess import _exemplars, _files, _lock

if TYPE_CHECKING:
    from pathlib import Path

# After a merge waited in vain, the merges of the next this many seconds try once
# without waiting, so that a burst of worker exits does not cost MERGE_TIMEOUT each.
STUCK_SECONDS: Final = 5.0
# Until when a directory's merges try the lock once without waiting, after one waited in
# vain for MERGE_TIMEOUT.
stuck_until: dict[str, float] = {}
# The merges put off, with a merge that waited too long for scrapes, in their
# directory's deque: append and popleft are atomic even against signal handlers, and
# only the merges of that directory, one at a time since each holds its lock, take from
# it. None stands for a sweep. Keyed by str, since a Path hashes in Python code that a
# signal handler could interrupt.
deferred: dict[str, deque[set[int] | None]] = {}


def after_fork_in_child() -> None:
    """Forget the parent's merges put off and its stuck directories."""
    deferred.clear()
    stuck_until.clear()


os.register_at_fork(after_in_child=after_fork_in_child)


def compact(directory: Path, pids: set[int] | None, timeout: float | None = None) -> int:
    """Merge the files of ``pids``, or of every dead process; return how many processes.

    The merges put off for the directory run too, and so do those that a signal handler
    asks for meanwhile.
    """
    key = str(directory)
    merged = 0
    while not getattr(_lock.local, "holding", False):
        # Soon after a merge waited in vain, one more try is all a merge makes; a try
        # that fails does not make that time longer, so merges wait again after it.
        wait = _lock.MERGE_TIMEOUT if timeout is None else timeout
        patience = wait if time.monotonic() >= stuck_until.get(key, 0) else 0
        with _lock.locked(directory, exclusive=True, timeout=patience) as taken:
            if taken:
                stuck_until.pop(key, None)
                pids = _with_deferred(directory, pids)
                try:
                    merged += merge(directory, pids)
                except BaseException:
                    defer(directory, pids)
                    raise
        if not taken:
            if patience:
                stuck_until[key] = time.monotonic() + STUCK_SECONDS
            break
        if not is_deferred(directory):
            return merged
        pids = set()
    defer(directory, pids)
    return merged


def defer(directory: Path, pids: set[int] | None) -> None:
    deferred.setdefault(str(directory), deque()).append(pids)


def is_deferred(directory: Path) -> bool:
    return bool(deferred.get(str(directory)))


def _with_deferred(directory: Path, pids: set[int] | None) -> set[int] | None:
    """Return ``pids`` with those put off for ``directory``, which leave the queue."""
    waiting = deferred.get(str(directory), deque())
    for _ in range(len(waiting)):
        more = waiting.popleft()
        pids = None if pids is None or more is None else pids | more
    return pids


def has_work(directory: Path) -> bool:
    """Tell, without the lock, whether a sweep of ``directory`` would merge anything."""
    names = _files.file_names(directory)
    if any(
        _files.CLAIMED_FILE.fullmatch(name)
        or _files.CLAIMED_EXEMPLAR_FILE.fullmatch(name)
        or _files.TEMPORARY_ARCHIVE.fullmatch(name)
        for name in names
    ):
        return True
    for pid, files in _files_by_pid(names, None).items():
        mergeable = [name for name in files if _mergeable(name)]
        if len(in_use(pid, directory, mergeable)) < len(mergeable):
            return True
    return False


def merge(directory: Path, pids: set[int] | None) -> int:
    """Merge the files of ``pids``, or of every dead process, holding the lock."""
    names = _files.file_names(directory)
    pending = unfinished_claims(directory, names)
    merged = {_files.pid_of(name) for name in pending if _files.CLAIMED_FILE.fullmatch(name)}
    merge_id = uuid.uuid4().hex
    for pid, files in _files_by_pid(names, pids).items():
        claims = _claim(directory, pid, files, merge_id)
        pending += claims
        merged.update(pid for name in claims if _files.CLAIMED_FILE.fullmatch(name))
    if not pending:
        return 0
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name in pending:
        by_kind[name.partition("_")[0]].append(name)
    # Claims must be on disk before an archive that absorbs them, and archives before
    # the claims they absorbed are unlinked. A live gauge dies with its process.
    _files.sync(directory)
    set_aside = set()
    for kind in _files.ADDITIVE:
        # Exemplars are kept with the counters, the only kind that has them.
        exemplars = by_kind["exemplars"] if kind == "counter" else []
        set_aside |= _absorb(directory, kind, by_kind[kind], exemplars)
    _files.sync(directory)
    for name in pending:
        if name not in set_aside:
            (directory / name).unlink()
    return len(merged)


def unfinished_claims(directory: Path, names: list[str]) -> list[str]:
    """Clean up after a merge that was killed; return its claims that remain to finish."""
    claims = []
    for name in names:
        if _files.TEMPORARY_ARCHIVE.fullmatch(name):
            (directory / name).unlink()
        elif (
            _files.CLAIMED_FILE.fullmatch(name)
            or _files.CLAIMED_GAUGE_FILE.fullmatch(name)
            or _files.CLAIMED_EXEMPLAR_FILE.fullmatch(name)
        ):
            claims.append(name)
    if not claims:  # the usual case, where reading the archives would cost every merge
        return []
    absorbed = {kind: _files.read_archive(directory, kind).absorbed for kind in _files.ADDITIVE}
    pending = []
    for name in claims:
        claim = _files.CLAIMED_FILE.fullmatch(name)
        exemplar_claim = _files.CLAIMED_EXEMPLAR_FILE.fullmatch(name)
        if (
            (claim and claim[3] in absorbed[claim[1]])
            or (exemplar_claim and exemplar_claim[2] in absorbed["counter"])
            or _files.given_back(directory, name)
        ):
            (directory / name).unlink()
        elif not (in_use(_files.pid_of(name), directory, [name]) and _give_back(directory, name)):
            pending.append(name)
    return pending


def _files_by_pid(names: list[str], pids: set[int] | None) -> dict[int, list[str]]:
    files: dict[int, list[str]] = defaultdict(list)
    for name in names:
        match = _files.PROCESS_FILE.fullmatch(name) or _files.EXEMPLAR_FILE.fullmatch(name)
        if match and (pids is None or int(match[1]) in pids):
            files[int(match[1])].append(name)
    return files


def _claim(directory: Path, pid: int, files: list[str], merge_id: str) -> list[str]:
    """Claim the files of ``pid``, but gauges other than live ones, that no process uses."""
    used = in_use(pid, directory, files)
    claims = []
    for name in files:
        if name not in used and _mergeable(name):
            claim = f"{name.rpartition('.')[0]}.{merge_id}.merging"
            (directory / name).rename(directory / claim)
            claims.append(claim)
    # Checked again after the claim: a process that reused the pid may have opened a
    # file until its rename, never after it. Only that process could have created the
    # name again, and it did not, since it holds the claimed file.
    taken_back = {
        claim for claim in in_use(pid, directory, claims) if _give_back(directory, claim)
    }
    return [claim for claim in claims if claim not in taken_back]


def _mergeable(name: str) -> bool:
    """Tell whether the file ``name`` is merged once its process is gone, or only deleted."""
    return bool(
        _files.LIVE_FILE.fullmatch(name)
        or _files.LIVE_GAUGE_FILE.fullmatch(name)
        or _files.EXEMPLAR_FILE.fullmatch(name)
    )


def _give_back(directory: Path, claim: str) -> bool:
    """Give ``claim``, which a running process uses, its live name back, if still free.

    Returns:
        Whether it did. If not, a process with the claim's pid created the live name
        since, and uses that file: the claim is an earlier process's, to merge.
    """
    # A link, since a rename would replace the new file; a kill before the unlink leaves
    # two names for one file, which _files.given_back tells.
    try:
        os.link(directory / claim, _files.live_name(directory, claim))
    except FileExistsError:
        return False
    (directory / claim).unlink()
    return True


def in_use(pid: int, directory: Path, names: list[str]) -> set[str]:
    """Return which of the files ``names`` a running process ``pid`` has open."""
    if not names:
        return set()
    try:
        descriptors = list((_files.PROC / str(pid) / "fd").iterdir())
    except FileNotFoundError:
        # No such process, or one that procfs hides (hidepid, or no procfs at all, as on
        # macOS): a running process may be a reuse of the pid, so it keeps every file.
        return set(names) if is_running(pid) else set()
    except OSError:
        # Another user's process, say: it may use the files, so they are left alone.
        return set(names)
    identities = {_files.identity((directory / name).stat()): name for name in names}
    used = set()
    for descriptor in descriptors:
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            name = identities.get(_files.identity(descriptor.stat()))
            if name is not None:
                used.add(name)
    return used


def is_running(pid: int) -> bool:
    # 0 and negative numbers name process groups for kill(), and no pid is that large.
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except OSError as error:
        # PermissionError: the process exists, but belongs to another user.
        return not isinstance(error, ProcessLookupError)
    return True


def _absorb(directory: Path, kind: str, claims: list[str], exemplar_claims: list[str]) -> set[str]:
    """Replace the archive of ``kind`` with one that adds the values of ``claims``.

    It keeps, of each series, the newer exemplar of the archive's and ``exemplar_claims``'.

    Returns:
        The claims that it set aside as corrupt instead.
    """
    if not claims and not exemplar_claims:
        return set()
    partials, _, exemplars = _files.read_archive(directory, kind)
    set_aside = set()
    absorbed = set()
    for name in exemplar_claims:
        try:
            _files.newest(exemplars, _exemplars.read_file(directory / name))
        except _exemplars.BadExemplarFileError as error:
            _files.set_aside(directory, name, _files.CorruptFileError("bad-header", str(error)))
            set_aside.add(name)
            continue
        absorbed.add(name.split(".")[1])
    for name in claims:
        try:
            values = _files.entries(directory / name, kind)
        except _files.CorruptFileError as error:
            _files.set_aside(directory, name, error)
            set_aside.add(name)
            continue
        for key, value in values.items():
            partials[key] = _files.add_exactly(partials.get(key, []), value)
        absorbed.add(name.split(".")[1])
    if not absorbed:
        return set_aside
    data = memoryview(_files.encode(partials, absorbed, exemplars))
    temporary = directory / f"{kind}_archive.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        # Whatever the umask: workers of another user read it, and the directory's own
        # mode decides who else may.
        os.fchmod(descriptor, 0o644)
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    temporary.replace(_files.archive_path(directory, kind))
    return set_aside
