"""The lock: the directory's flock, bounded waits, the writers' turn, fork and signal safety.

Scrapes and merges exclude each other through an ``fcntl.flock`` on the directory
itself. Both take the lock of the file ``veza_merge.lock`` first, a scrape only until it
has the directory's: a merge that waits for scrapes to finish keeps new ones out, so a
stream of scrapes cannot put merges off. A server holds a shared lock on
``veza_server.lock`` for its life, which a cold start takes exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from typing import TYPE_CHECKING, Final, cast

from veza_business_metrics._errors import DirectoryInUseError, LockTimeoutError
from veza_business_metrics.multiprocess import _files

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# How long a scrape, and a clear, wait for the lock before they raise LockTimeoutError: a
# process stopped while holding it (SIGSTOP, a debugger, a frozen container) must not
# hang a server's workers. Longer than a merge's wait, so that a merge that waits in vain
# for a stopped scrape, and keeps new scrapes out meanwhile, does not fail them.
SCRAPE_TIMEOUT: Final = 5.0
# How long a merge waits for the lock before it is put off: a gunicorn master must not
# hang on a stopped process either.
MERGE_TIMEOUT: Final = 2.0
_MERGE_LOCK: Final = "veza_merge.lock"
_SERVER_LOCK: Final = "veza_server.lock"
# The descriptors through which this process takes the lock. A child forked meanwhile
# gets copies, which would hold the lock until the child exits: it closes them. The
# lock that guards the set is reentrant, since a signal handler may run a merge, and
# so open a descriptor, while the code it interrupted holds it, as gunicorn's before
# version 24 do when a SIGCHLD comes during the fork hooks.
descriptors: set[int] = set()
opening = threading.RLock()
# Whether this thread is taking or holding the lock (local.holding): a merge that a
# signal handler asks for meanwhile must not wait for it, and is put off instead.
local = threading.local()
# The descriptor of each directory's server lock that this process holds, shared, for
# its life. Forked workers keep it on purpose: while any of them lives, the server does.
_serving: dict[str, int] = {}


def before_fork() -> None:
    opening.acquire()


def after_fork_in_parent() -> None:
    opening.release()


def after_fork_in_child() -> None:
    global opening  # noqa: PLW0603  a child starts with a lock that nothing holds
    opening = threading.RLock()
    for descriptor in descriptors:
        # Another fork hook may have closed it already; the resets below must still run.
        with contextlib.suppress(OSError):
            os.close(descriptor)
    descriptors.clear()
    local.holding = False


@contextlib.contextmanager
def server_lock(directory: Path, *, alone: bool) -> Iterator[None]:
    """Hold the directory's lock, and this process's share of its server lock, for the block.

    Raises:
        DirectoryInUseError: If ``alone`` and another server holds a share.
        LockTimeoutError: If another process held the lock for ``SCRAPE_TIMEOUT``.
    """
    # Under the directory's lock, so that no other start converts its lock meanwhile.
    with locked(directory, exclusive=True, timeout=SCRAPE_TIMEOUT) as taken:
        if not taken:
            msg = (
                f"waited {SCRAPE_TIMEOUT:g} s in vain for the lock on {directory}: a"
                " process that holds it is stopped or stuck; nothing was deleted"
            )
            raise LockTimeoutError(msg)
        key = str(directory)
        descriptor = _serving.get(key)
        if descriptor is None:
            descriptor = os.open(directory / _SERVER_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            if alone:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    others = _holders(directory / _SERVER_LOCK)
                    msg = (
                        f"{directory} is in use by another server"
                        f"{f' (pid {others})' if others else ''}: give each server a"
                        " directory of its own, or stop the other one first; nothing was"
                        " deleted"
                    )
                    raise DirectoryInUseError(msg) from None
                finally:
                    # A failed conversion drops the lock this process held: take it
                    # again, which no other start can prevent while this one has the
                    # directory's lock.
                    fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BaseException:
            if key not in _serving:
                os.close(descriptor)
            raise
        _serving[key] = descriptor
        yield


def _holders(lock_file: Path) -> str:
    """Return the pids of the other processes that hold ``lock_file``, as /proc/locks says."""
    try:
        inode = lock_file.stat().st_ino
        lines = (_files.PROC / "locks").read_text().splitlines()
    except OSError:
        return ""
    own = str(os.getpid())
    return ", ".join(
        sorted(
            {
                fields[4]
                for fields in map(str.split, lines)
                # "1: FLOCK ADVISORY READ 1234 fd:01:5678 0 EOF"; a waiter has "->" after "1:".
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}")  # noqa: PLR2004
            }
            - {own},
            key=int,
        )
    )


@contextlib.contextmanager
def locked(directory: Path, *, exclusive: bool, timeout: float) -> Iterator[bool]:
    """Hold the directory's lock while the block runs; give whether it was taken in time."""
    outer = getattr(local, "holding", False)
    local.holding = True
    deadline = time.monotonic() + timeout
    try:
        with _opened(directory, _MERGE_LOCK) as turn, _opened(directory, None) as whole:
            taken = turn is None or flock(turn, fcntl.LOCK_EX, deadline)
            if taken:
                operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
                taken = flock(cast("int", whole), operation, deadline)
                if turn is not None and not exclusive:
                    # A scrape lets the next one in at once; a merge keeps scrapes out
                    # until it is done, and while it waits for the ones under way.
                    fcntl.flock(turn, fcntl.LOCK_UN)
            yield taken
    finally:
        local.holding = outer


@contextlib.contextmanager
def _opened(directory: Path, name: str | None) -> Iterator[int | None]:
    """Open the directory, or its file ``name``, for a lock; give None if it cannot be."""
    with opening:
        if name is None:
            # The directory itself, not a file: whoever may read the directory, a worker
            # of another user or an exporter on a read-only mount, may lock it.
            descriptor: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        else:
            descriptor = _open_lock_file(directory / name)
        if descriptor is not None:
            descriptors.add(descriptor)
    try:
        yield descriptor
    finally:
        if descriptor is not None:
            with opening:
                descriptors.discard(descriptor)
                os.close(descriptor)


def _open_lock_file(path: Path) -> int | None:
    # Open it, or create it, or open it as another process just created it.
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_CREAT | os.O_EXCL, os.O_RDONLY):
        try:
            descriptor = os.open(path, flags, 0o644)
        except (FileNotFoundError, FileExistsError):
            continue
        except OSError:
            # A scraper that may not write there, another user's or on a read-only
            # mount, takes the directory's lock alone: it merely does not give merges
            # their turn.
            return None
        if flags & os.O_CREAT:
            # Whatever the umask: other users' scrapers lock it too.
            os.fchmod(descriptor, 0o644)
        return descriptor
    return None  # a dangling link, say


def flock(descriptor: int, operation: int, deadline: float) -> bool:
    pause = 0.001
    while True:
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.02)
        else:
            return True


os.register_at_fork(
    before=before_fork,
    after_in_parent=after_fork_in_parent,
    after_in_child=after_fork_in_child,
)
