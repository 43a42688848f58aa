"""The artifact cache: folders keyed by a hash of what determines their content, never by
time, each with a manifest of its key inputs.

Parallel jobs (a sweep under the joblib or SLURM launcher, app jobs on several devices) share
it: an entry is computed once, under an :class:`EntryLock`, and the other jobs that need it
wait for it, then load it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from i2vedit.files import temp_beside, write_json
from i2vedit.progress import report_step

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)

#: Seconds between the refreshes (the mtime) of a held lock file by its holder.
LOCK_HEARTBEAT_S = 5.0
#: A lock file that has not changed for this long, by the waiter's own clock (so the clocks of
#: hosts and file server need not agree), was left by a killed job and is broken. Far above the
#: heartbeat, so a busy holder or a slow shared filesystem is never taken for a dead one.
LOCK_STALE_S = 120.0
#: Seconds between a waiter's looks at the lock file.
LOCK_POLL_S = 0.5
#: A waiter says whom it waits for when it starts waiting, then every this many seconds.
LOCK_REPORT_S = 60.0


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        if target.is_dir():
            h.update(str(file.relative_to(target)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (of every file's name and bytes, for a folder)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def key_of(inputs: dict[str, Any]) -> str:
    """A short stable hash of the key inputs (JSON with sorted keys)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(folder: Path, kind: str, inputs: dict[str, Any]) -> None:
    """Record (atomically) what an entry was made from; kept if it is already there."""
    path = folder / MANIFEST
    if path.is_file():
        return
    record = {
        "kind": kind,
        "key": key_of(inputs),
        "inputs": inputs,
        "files": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(path, record, default=str)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class EntryLock:
    """Computes an entry once among parallel jobs: the lock file ``.<name>.lock`` beside the
    entry (folder) ``target``, created with ``O_CREAT | O_EXCL`` (atomic across processes, and
    across nodes on NFSv3+ and Lustre), holding JSON ``{host, pid, created, token}``.

    Use it as ``with EntryLock(folder): <check the entry again; compute it if still missing>``.
    The holder refreshes the file's mtime every ``heartbeat`` seconds from a daemon thread and
    removes it on release (also on errors and interrupts). A waiter polls, says whom it waits
    for (logged, and as a step to the step listener, which may cancel it), and breaks the lock
    when its holder is dead: a pid gone on this host at once, any holder whose heartbeat has
    not changed for ``stale`` seconds.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        what: object = None,
        *,
        stale: float = LOCK_STALE_S,
        heartbeat: float = LOCK_HEARTBEAT_S,
        poll: float = LOCK_POLL_S,
        report: float = LOCK_REPORT_S,
    ):
        target = Path(target)
        self.path = target.parent / f".{target.name}.lock"
        self.what = str(what if what is not None else target)
        self.stale, self.heartbeat, self.poll, self.report = stale, heartbeat, poll, report
        self.token: str | None = None  #: this holder's, while it holds the lock
        self.waited = 0.0  #: seconds the last ``acquire`` waited for another job
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"EntryLock({self.path})"

    def __enter__(self) -> EntryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _read(self) -> tuple[dict[str, Any], tuple] | None:
        """The holder's record and a fingerprint that changes with every heartbeat (None: no
        lock file). Opened each time, so NFS revalidates the attributes (close-to-open)."""
        try:
            with open(self.path, "rb") as f:
                text, stat = f.read(), os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            holder = holder if isinstance(holder, dict) else {}
        except ValueError:  # just created, not written yet (or garbage)
            holder = {}
        return holder, (text, stat.st_ino, stat.st_mtime_ns)

    def _create(self) -> bool:
        token = uuid.uuid4().hex
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": token,
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        self.token = token
        return True

    def _dead(self, holder: dict[str, Any], unchanged: float) -> str | None:
        """Why the holder is dead, or None while it may be alive."""
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            if not _pid_alive(pid):
                return f"its process {pid} is gone"
        if unchanged >= self.stale:
            return f"no heartbeat for {unchanged:.0f} s"
        return None

    def _break(self, holder: dict[str, Any], why: str) -> None:
        """Remove the dead holder's lock file, and only that one: it is first renamed aside, so
        two waiters breaking at once never remove a lock that one of them has just taken."""
        aside = self.path.with_name(f"{self.path.name}.broken-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # released, or broken by another waiter
        seen = self._read_at(aside)
        if seen.get("token") == holder.get("token"):
            log.warning("%s: breaking the lock of %s (%s)", self.what, _holder(holder), why)
            aside.unlink(missing_ok=True)
        else:  # a new holder's lock, taken between our look and the rename: put it back
            os.rename(aside, self.path)

    @staticmethod
    def _read_at(path: Path) -> dict[str, Any]:
        try:
            holder = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> EntryLock:
        """Take the lock, waiting (interruptibly) while a live job holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        seen, changed, told = None, started, None
        stage = f"waiting for {self.what}"
        while not self._create():
            look = self._read()
            if look is None:
                continue  # released just now: try again at once
            holder, fingerprint = look
            now = time.monotonic()
            if fingerprint != seen:
                seen, changed = fingerprint, now
            why = self._dead(holder, now - changed)
            if why is not None:
                self._break(holder, why)
                continue
            if told is None or now - told >= self.report:
                log.info(
                    "%s: %s by %s; waiting%s",
                    self.what,
                    "being computed" if told is None else "still being computed",
                    _holder(holder),
                    "" if told is None else f" ({now - started:.0f} s)",
                )
                told = now
            report_step(stage, 0, 1)  # the app's cancel stops the wait here
            time.sleep(self.poll)
        self.waited = time.monotonic() - started
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._heartbeat, name=f"lock {self.path.name}", daemon=True
        )
        self._beat.start()
        if told is not None:
            log.info("%s: the other job is done (waited %.0f s)", self.what, self.waited)
            try:
                report_step(stage, 1, 1)
            except BaseException:  # cancelled: the lock is not left behind
                self.release()
                raise
        return self

    def _held(self) -> bool:
        return self.token is not None and self._read_at(self.path).get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._held():
                    log.warning("%s: lost the lock %s (broken by another job)", self.what, self)
                    return
                os.utime(self.path)
            except OSError as err:  # a hiccup of a shared filesystem: try again next beat
                log.warning("%s: could not refresh the lock %s (%s)", self.what, self, err)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, if it is still this holder's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._held():
            self.path.unlink(missing_ok=True)
        self.token = None


def _holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another job"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('created')})"


class TensorEntry:
    """A cache entry of safetensors files, complete only once its manifest is written.

    The manifest lists every file with its size and SHA-256; a load checks them, so a
    truncated or altered file is detected (and the entry dropped), never silently used.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], kind: str, name: str, inputs: dict[str, Any]
    ):
        self.kind, self.inputs = kind, inputs
        self.key = key_of(inputs)
        self.folder = Path(cache_dir).expanduser() / kind / f"{name}-{self.key}"
        #: the manifest's file list after a successful ``load``
        self.files: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"{self.kind} {self.folder.name}"

    def locked(self, **kwargs: Any) -> EntryLock:
        """The entry's lock (``with entry.locked(): load it again, or compute and save it``);
        ``kwargs`` as :class:`EntryLock`'s."""
        return EntryLock(self.folder, self, **kwargs)

    def load(self) -> dict[str, dict[str, Any]] | None:
        """The entry's tensors by file stem, or None when absent or corrupt (then removed).

        Files under a subfolder (attention records, one file per step) are checked for their
        size only and not loaded: their reader checks each against ``files`` when it reads it.
        """
        from safetensors.torch import load_file

        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            return None
        try:
            record = json.loads(manifest.read_text())
            tensors = {}
            for name, meta in record["files"].items():
                path = self.folder / name
                if path.stat().st_size != meta["bytes"]:
                    raise ValueError(f"{name} does not match its manifest (size)")
                if "/" in name:
                    continue
                if file_sha256(path) != meta["sha256"]:
                    raise ValueError(f"{name} does not match its manifest")
                tensors[Path(name).stem] = load_file(path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            log.warning("cache entry %s is corrupt (%s): recomputing it", self.folder, err)
            self.drop()
            return None
        self.files = record["files"]
        return tensors

    def stage(self) -> Path:
        """A new temporary folder beside the entry, for files written before ``save`` (which
        then adds them to the manifest and renames the folder into place)."""
        return temp_beside(self.folder, folder=True)

    def save(
        self,
        files: dict[str, dict[str, Any]],
        staged: Path | None = None,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Write ``{stem: {tensor name: tensor}}`` as one safetensors file each, atomically: into
        a temporary folder (``staged``, holding files written earlier, if given, whose
        checksums may be ``known``), manifest last, then renamed into place."""
        from safetensors.torch import save_file

        tmp = staged if staged is not None else self.stage()
        try:
            listed = {}
            for path in sorted(tmp.rglob("*")):
                if path.is_file():
                    name = path.relative_to(tmp).as_posix()
                    meta = (known or {}).get(name)  # checksums taken while writing
                    if meta is None or meta["bytes"] != path.stat().st_size:
                        meta = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                    listed[name] = meta
            for stem, tensors in files.items():
                path = tmp / f"{stem}.safetensors"
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
                listed[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            record = {
                "kind": self.kind,
                "key": self.key,
                "inputs": self.inputs,
                "files": listed,
                "bytes": sum(meta["bytes"] for meta in listed.values()),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            write_json(tmp / MANIFEST, record, default=str)
            self.drop()
            try:
                os.replace(tmp, self.folder)
            except OSError:  # written meanwhile by another job (one that broke our lock)
                if not (self.folder / MANIFEST).is_file():
                    raise
                log.warning("%s was written by another job meanwhile: keeping that one", self)
                listed = json.loads((self.folder / MANIFEST).read_text())["files"]
            self.files = listed
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def drop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
