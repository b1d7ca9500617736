"""Per-partition locks, and telling whether the process that started a run still exists.

Two materializations of one partition at once (two `traitflow run`s, or one plus a UI launch)
would interleave their writes: a steering search appending the same configurations to one
`results.jsonl` twice, or one run's artifacts overwriting the other's halfway. So the stage loop
holds an OS file lock (`fcntl.flock`, exclusive) on

    <storage>/<experiment>/.locks/<asset>/<partition>.lock

around each partition's work. The kernel drops the lock when its holder exits, SIGKILL included,
so a killed holder never blocks anyone: there is nothing stale to clean up, and lock files are
never deleted (deleting a lock file while another process waits on it would let two hold "it").

A busy partition is refused at once (no waiting): the second run fails with one line naming the
partition and the holder's PID, host and run. Waiting would only make sense with a timeout longer
than the holder's stage, which can take hours on a real model, and what the second run would then
find is the work already done. Retry once the holder's run has ended (or stop it).

flock is per open file, so the lock also excludes a second holder inside the same process; it is
honoured by local file systems (and NFS v4); on other network file systems it may not be.
"""

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from traitflow.errors import TraitflowError

LOCKS_DIR = ".locks"


class PartitionBusy(TraitflowError):
    """Another process is materializing this partition right now."""


def lock_path(root: Path, experiment: str, asset: str, partition: str) -> Path:
    """The lock file of one (experiment, asset, partition) under a storage root. Partition keys
    such as `toy/optimism|chat` are quoted into one file name."""
    for part in (experiment, asset):
        if not part or part in (".", "..") or "/" in part or os.sep in part:
            raise TraitflowError(f"lock path part {part!r} is not a safe name")
    return Path(root) / experiment / LOCKS_DIR / asset / f"{quote(partition, safe='|=,+@')}.lock"


@contextmanager
def partition_lock(root: Path, experiment: str, asset: str, partition: str, run_id: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of one partition for the duration of the block, or raise
    :class:`PartitionBusy` at once when another process holds it. While held, the lock file
    names this process (`{"pid", "host", "run_id", "pid_start"}`) for whoever is refused."""
    import fcntl

    path = lock_path(root, experiment, asset, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            raise PartitionBusy(f"{experiment}/{asset} {partition} is being materialized by {holder}; "
                                "not running it twice at once: retry when that run has ended, or stop it") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "pid_start": process_start(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now; the kernel unlocks on close (or on death)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}  # the holder has the lock but has not written its name yet


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (PID not written yet)"
    where = f" on {holder['host']}" if holder.get("host") else ""
    run = f" (run {holder['run_id']})" if holder.get("run_id") else ""
    return f"PID {holder['pid']}{where}{run}"


# --------------------------------------------------------------------------- processes
def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc), or None where unknown.
    With the PID it names one process even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0], starttime fields[19]
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` on this host still runs (a zombie does not). With `start` (from
    :func:`process_start` when it was recorded), a different process that reused the PID does not count."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone since os.kill, unless there is no /proc at all
    except OSError:
        return True
    fields = stat[stat.rindex(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    return not (start and len(fields) > 19 and fields[19] != start)
