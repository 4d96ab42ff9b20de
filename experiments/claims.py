"""Per-run claims, so that any number of identical workers on one results folder (background
processes, a cluster's job array without --shard, several machines on a shared filesystem) train
every run exactly once.

A worker owns a run while its `runs/<run>/claim.json` names it. The file is created with O_EXCL
(one creator wins), holds the owner (host, pid, a worker id, when it started), and its mtime is a
heartbeat, touched every HEARTBEAT seconds by a background thread while the run trains. A claim is
stale when its owner is on this host and its process is gone (a SIGKILLed worker: taken over at
once), or when its heartbeat is older than CNNEXT_CLAIM_TIMEOUT seconds (default 120; an owner on
another host that died). A stale claim is taken over by renaming it away first (only one of
several takers' renames succeeds) and then claiming afresh.
"""

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from cnnext._files import process_alive

__all__ = ["Claim", "claim", "live_claims_on_this_host"]

HEARTBEAT = 10.0
HOST = socket.gethostname()
WORKER = uuid.uuid4().hex[:12]  # this process


def _timeout() -> float:
    return float(os.environ.get("CNNEXT_CLAIM_TIMEOUT", "120"))


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or being written this instant


def _stale(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: not ours to take over, just claim again
    owner = _owner(path)
    if owner is None:
        return age > _timeout()  # an owner that died between creating and writing it
    if owner.get("host") == HOST and not process_alive(int(owner.get("pid", -1))):
        return True
    return age > _timeout()


class Claim:
    """This worker's ownership of one run; release() when the run is finished (or abandoned)."""

    def __init__(self, path: Path):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"claim heartbeat {path.parent.name}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        owner = _owner(self.path)
        if owner is not None and owner.get("worker") == WORKER:
            self.path.unlink(missing_ok=True)


def claim(folder: Path) -> Claim | None:
    """Claim the run in `folder`, taking a stale claim over; None when a live worker holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "claim.json"
    for _ in range(2):  # once as is, once more after taking a stale claim away
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return None
            try:
                path.rename(folder / f".claim-stale-{WORKER}.json")  # one taker wins this rename
                (folder / f".claim-stale-{WORKER}.json").unlink()
            except FileNotFoundError:
                pass  # another worker took it away first; try to claim like everyone else
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": HOST, "pid": os.getpid(), "worker": WORKER, "since": time.time()}, f)
        return Claim(path)
    return None


def live_claims_on_this_host(runs: Path) -> int:
    """How many runs under `runs` are being trained on this host right now (this worker's included)."""
    count = 0
    for path in runs.glob("*/claim.json"):
        owner = _owner(path)
        if owner is not None and owner.get("host") == HOST and process_alive(int(owner.get("pid", -1))):
            count += 1
    return count
