"""Atomic file replacement, for every file a long run writes (checkpoints, caches, metrics,
reports, plots): an interruption or a concurrent reader never sees a partial file."""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "process_alive", "remove_stale_temporaries"]


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files a killed writer of `path` left behind (.name.tmp<pid> whose
    process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block ends normally it replaces
    `path` in one step, when it raises it is removed and `path` keeps its previous contents.
    Temporaries of earlier writers that were killed are removed first. A write that fails because
    the disk is full raises OSError(ENOSPC) naming `path`, whatever the writing library said."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or _disk_full(path.parent):
            raise OSError(
                errno.ENOSPC, f"no space left on the device while writing {path} ({error})"
            ) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(folder: Path) -> bool:
    """Whether the file system of `folder` has (nearly) no space left: libraries report a full disk
    in their own words (torch.save: "enforce fail at inline_container.cc")."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False
