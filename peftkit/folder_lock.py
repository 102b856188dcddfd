"""One writer at a time: an exclusive lock on a folder, held for a whole run or bench.

    lock = FolderLock(folder / LOCK, "run folder runs/x")   # rundir.LOCK names the file
    lock.acquire()   # or raises UsageError naming the other process (its pid)
    ...              # train, write, clean up
    lock.release()

fcntl.flock on a file inside the folder: the kernel drops the lock when its process dies (kill -9,
power loss), so a lock left by a dead process never blocks anyone; the file itself stays and is
harmless. Where fcntl does not exist (Windows) there is no lock. Torch-free, no peftkit imports but
errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class FolderLock:
    def __init__(self, path: Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def acquire(self) -> "FolderLock":
        if fcntl is None or self.fd is not None:  # `with lock_folder(...)`: acquired already
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PeftkitError(f"cannot create the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{self.what} is in use by another peftkit process (pid {holder}, lock "
                             f"{self.path}); two writers would mix their files. Wait for it to "
                             "finish, stop it, or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
