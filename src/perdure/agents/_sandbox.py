"""Sandboxes: a workspace per agent run whose files follow the run's history.

A sandbox tool (``write_file``, ``run_command``, ...) is an activity that works in a
workspace directory. After a change, the workspace is checkpointed: a manifest of its
files by content hash, stored with the files' contents in the payload store, and the
manifest's reference is part of the tool's result, so it is in history. Each sandbox
call names the checkpoint it expects. A workspace that is missing (its machine went
away, the sandbox was OOM-killed and wiped) or that holds something else (an attempt
changed it and died before its result was recorded) is first restored from that
checkpoint. A workspace is therefore always at the state its run's history says, on any
worker: a crash costs a restore, never a lost change or one applied twice.

Sub-agents start from their parent's checkpoint in a workspace of their own; when one
finishes, its changes are merged into the parent's workspace (by file: the sub-agent's
version of each file it changed). The merge is a function of three manifests, so it
replays like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import resource
import shutil
import signal
import stat
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from perdure import ApplicationError, RetryPolicy, activity
from perdure.agents._tools import ACTIVITY_PREFIX, Tool, _schema_and_validator

T = TypeVar("T")

__all__ = ["LocalSandboxes", "SandboxLimits", "SandboxState", "SandboxToolResult",
           "merge_manifests", "sandbox_merge"]

SANDBOX_MERGE = "perdure.agents.sandbox_merge"
_INDEX, _LOCK, _DIRTY = ".index", ".lock", ".dirty"
_SYMLINK = stat.S_IFLNK
_CHUNK_BYTES = 8 * 1024 * 1024
"""Payloads stored per store call at most (about): one transaction stays small."""


class SandboxState(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where an agent run's workspace stands: whose workspace (``key``, a workflow id),
    the checkpoint it should hold (None: empty), and the workflow whose payloads hold
    that checkpoint (a sub-agent starts from its parent's)."""

    key: str
    checkpoint: str | None = None
    owner: str = ""
    agent: str = ""
    stream_to: str = ""
    """Whose stream hears of restores (the agent tree's root), and as which agent."""


class SandboxToolResult(msgspec.Struct, omit_defaults=True):
    """A sandbox tool's answer to the model, and the workspace's new checkpoint (None:
    the tool changed nothing)."""

    output: str
    checkpoint: str | None = None
    changed: bool = False
    """Whether ``checkpoint`` is the workspace's new state (stored under the workflow
    that ran the tool); False for tools that only read."""


class _Manifest(msgspec.Struct, omit_defaults=True):
    files: dict[str, tuple[str, int]] = msgspec.field(default_factory=dict)
    """Path (relative, ``/``-separated) to (content hash, mode)."""


_manifest_decoder = msgspec.json.Decoder(_Manifest)


def _encode_manifest(files: dict[str, tuple[str, int]]) -> bytes:
    return msgspec.json.encode(_Manifest(files=dict(sorted(files.items()))))


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox may use. Commands run under ``memory_mb`` of address space and
    ``cpu_seconds`` of CPU time (hitting either kills the command, not the worker), and
    are killed after ``command_timeout``."""

    memory_mb: int = 2048
    cpu_seconds: int = 600
    command_timeout: timedelta = timedelta(minutes=10)
    max_output_chars: int = 20_000
    """Longer command output or file content reaches the model cut in the middle."""
    max_workspace_bytes: int = 512 * 1024 * 1024
    """A checkpoint of a bigger workspace fails (it would not be cheap to restore)."""


# ---------------------------------------------------------------- merging (pure)
def merge_manifests(base: dict[str, tuple[str, int]], ours: dict[str, tuple[str, int]],
                    theirs: dict[str, tuple[str, int]],
                    ) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """Three-way merge by file: every file ``theirs`` changed relative to ``base`` (added,
    changed, deleted) takes their version; the rest stays ours. Also the paths both sides
    changed differently (theirs won)."""
    merged = dict(ours)
    conflicts: list[str] = []
    for path in sorted(set(base) | set(theirs)):
        before, after = base.get(path), theirs.get(path)
        if before == after:
            continue
        mine = ours.get(path)
        if mine != before and mine != after:
            conflicts.append(path)
        if after is None:
            merged.pop(path, None)
        else:
            merged[path] = after
    # a path cannot be both a file (or symlink) and a folder: where one side made a
    # folder of what the other has as a file, their side wins there too
    for path in sorted(merged):
        if path not in merged:
            continue
        parts = path.split("/")
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            if ancestor not in merged:
                continue
            theirs_changed_path = base.get(path) != theirs.get(path)
            if theirs_changed_path and base.get(ancestor) == theirs.get(ancestor):
                del merged[ancestor]  # they filled the folder: our file goes
                conflicts.append(ancestor)
            else:
                del merged[path]  # our file inside their file (or symlink) goes
                conflicts.append(path)
                break
    return merged, sorted(set(conflicts))


_manifests: OrderedDict[str, dict[str, tuple[str, int]]] = OrderedDict()
"""Manifests by reference, most recent last (a reference names its content: never stale).
Callers must not change what they get."""
_CACHED_MANIFESTS = 64


def _remember_manifest(ref: str, files: dict[str, tuple[str, int]]) -> None:
    _manifests[ref] = files
    _manifests.move_to_end(ref)
    while len(_manifests) > _CACHED_MANIFESTS:
        _manifests.popitem(last=False)


async def _load_manifest(ref: str | None, owner: str) -> dict[str, tuple[str, int]]:
    if ref is None:
        return {}
    cached = _manifests.get(ref)
    if cached is not None:
        return cached
    data = (await activity.load_payloads(ref, workflow_id=owner or None)).get(ref)
    if data is None:
        raise ApplicationError(f"sandbox checkpoint {ref} is missing from the payload store "
                               f"of {owner!r} (was that workflow pruned?)",
                               type="SandboxCheckpointMissing", non_retryable=True)
    files = {path: (h, mode) for path, (h, mode) in _manifest_decoder.decode(data).files.items()}
    _remember_manifest(ref, files)
    return files


async def _copy_contents(hashes: list[str], owner: str) -> None:
    """Store, under this activity's workflow, the contents ``owner`` holds for ``hashes``."""
    here = activity.info().workflow_id
    if not hashes or owner in ("", here):
        return
    for first in range(0, len(hashes), 50):
        chunk = hashes[first:first + 50]
        found = await _load_contents(chunk, owner)
        await _store_in_chunks([found[h] for h in chunk])


async def _load_contents(hashes: list[str], owner: str) -> dict[str, bytes]:
    """The contents ``owner``'s payload store holds for ``hashes``: all of them, or an
    error naming the first that is missing."""
    found: dict[str, bytes] = {}
    for first in range(0, len(hashes), 200):
        found.update(await activity.load_payloads(*hashes[first:first + 200],
                                                  workflow_id=owner or None))
    missing = [h for h in hashes if h not in found]
    if missing:
        raise ApplicationError(f"sandbox file {missing[0]} is missing from the payload "
                               f"store of {owner!r}", type="SandboxCheckpointMissing",
                               non_retryable=True)
    return found


async def _store_in_chunks(contents: list[bytes]) -> None:
    """Store contents in calls of about ``_CHUNK_BYTES``: one transaction stays small."""
    batch: list[bytes] = []
    size = 0
    for data in contents:
        batch.append(data)
        size += len(data)
        if size >= _CHUNK_BYTES:
            await activity.store_payloads(*batch)
            batch, size = [], 0
    if batch:
        await activity.store_payloads(*batch)


@activity.defn(name=SANDBOX_MERGE)
async def sandbox_merge(base: SandboxState, ours: SandboxState,
                        theirs: SandboxState) -> SandboxToolResult:
    """Merge a sub-agent's workspace (``theirs``, started from ``base``) into its
    parent's (``ours``); the result's checkpoint is stored under the parent."""
    base_files = await _load_manifest(base.checkpoint, base.owner)
    our_files = await _load_manifest(ours.checkpoint, ours.owner)
    their_files = await _load_manifest(theirs.checkpoint, theirs.owner)
    merged, conflicts = merge_manifests(base_files, our_files, their_files)
    # every content the merged manifest names must live under the parent
    await _copy_contents(sorted({h for h, _ in our_files.values()}), ours.owner)
    await _copy_contents(sorted({h for h, _ in their_files.values()} - {
        h for h, _ in our_files.values()}), theirs.owner)
    changed = sorted(p for p in set(base_files) | set(their_files)
                     if base_files.get(p) != their_files.get(p))
    note = (f"{len(changed)} file(s) changed: {', '.join(changed[:20])}"
            + (" ..." if len(changed) > 20 else "")) if changed else "no files changed"
    if conflicts:
        note += (f"; both sides changed {', '.join(conflicts[:20])}: the sub-agent's "
                 "version was kept")
    if not merged:
        return SandboxToolResult(output=note, checkpoint=None, changed=True)
    (ref,) = await activity.store_payloads(_encode_manifest(merged))
    _remember_manifest(ref, merged)
    return SandboxToolResult(output=note, checkpoint=ref, changed=True)


# ---------------------------------------------------------------- local workspaces
class _IndexFile(msgspec.Struct):
    checkpoint: str = ""
    stored_for: str = ""
    """The workflow under whose payloads every file of ``checkpoint`` is stored."""
    entries: dict[str, tuple[int, int, str, int]] = msgspec.field(default_factory=dict)


class _Workspace:
    """One sandbox's directory, and beside it what it holds (checkpoint, file hashes)."""

    def __init__(self, root: Path, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in key)[-40:]
        self.dir = root / f"{slug}-{digest}"
        self.meta = root / f".{slug}-{digest}"

    def read_index(self) -> _IndexFile:
        try:
            return msgspec.json.decode((self.meta / _INDEX).read_bytes(), type=_IndexFile)
        except (OSError, msgspec.DecodeError):
            return _IndexFile()

    def write_index(self, index: _IndexFile) -> None:
        tmp = self.meta / (_INDEX + ".tmp")
        tmp.write_bytes(msgspec.json.encode(index))
        os.replace(tmp, self.meta / _INDEX)

    def is_dirty(self) -> bool:
        return (self.meta / _DIRTY).exists()

    def set_dirty(self, dirty: bool) -> None:
        """Mark the workspace as being changed: an attempt that dies before its checkpoint
        leaves the mark, and the next attempt restores instead of trusting the files."""
        if dirty:
            (self.meta / _DIRTY).touch()
        else:
            (self.meta / _DIRTY).unlink(missing_ok=True)

    def update(self, index: _IndexFile, old: dict[str, tuple[str, int]], paths: list[str],
               limit: int) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
        """Like :meth:`scan`, for a change known to touch only ``paths``."""
        files = dict(old)
        fresh: dict[str, bytes] = {}
        entries = dict(index.entries)
        for rel in paths:
            full = self.dir / rel
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                files.pop(rel, None)
                entries.pop(rel, None)
                continue
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(full).encode()
                mode = _SYMLINK
            else:
                data = full.read_bytes()
                mode = stat.S_IMODE(st.st_mode)
            digest = hashlib.sha256(data).hexdigest()
            fresh[digest] = data
            files[rel] = (digest, mode)
            if mode != _SYMLINK:
                entries[rel] = (st.st_mtime_ns, st.st_size, digest, mode)
        index.entries = entries
        if sum(e[1] for e in entries.values()) > limit:
            raise ApplicationError(
                f"the sandbox holds more than {limit // (1024 * 1024)} MB; remove build "
                "outputs or caches it does not need", type="SandboxTooLarge",
                non_retryable=True)
        return files, fresh

    def resolve(self, path: str) -> Path:
        """``path`` inside the workspace, or a tool error naming it."""
        target = (self.dir / path).resolve()
        root = self.dir.resolve()
        if target != root and root not in target.parents:
            raise ApplicationError(f"{path!r} is outside the sandbox; use a path relative to "
                                   "the project root", type="ToolArgumentsError",
                                   non_retryable=True)
        return target

    def scan(self, index: _IndexFile, limit: int) -> tuple[dict[str, tuple[str, int]],
                                                           dict[str, bytes]]:
        """The workspace's files by hash (rehashing only what changed since the index),
        and the contents of files whose hash is new."""
        files: dict[str, tuple[str, int]] = {}
        fresh: dict[str, bytes] = {}
        entries: dict[str, tuple[int, int, str, int]] = {}
        total = 0
        for folder, dirs, names in os.walk(self.dir):
            dirs.sort()
            for name in sorted(names) + [d for d in dirs if os.path.islink(
                    os.path.join(folder, d))]:
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, self.dir).replace(os.sep, "/")
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    data = os.readlink(full).encode()
                    digest = hashlib.sha256(data).hexdigest()
                    files[rel] = (digest, _SYMLINK)
                    fresh.setdefault(digest, data)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                total += st.st_size
                if total > limit:
                    raise ApplicationError(
                        f"the sandbox holds more than {limit // (1024 * 1024)} MB; remove "
                        "build outputs or caches it does not need", type="SandboxTooLarge",
                        non_retryable=True)
                mode = stat.S_IMODE(st.st_mode)
                known = index.entries.get(rel)
                if known is not None and known[0] == st.st_mtime_ns and known[1] == st.st_size:
                    digest = known[2]
                else:
                    with open(full, "rb") as handle:
                        data = handle.read()
                    digest = hashlib.sha256(data).hexdigest()
                    fresh.setdefault(digest, data)
                files[rel] = (digest, mode)
                entries[rel] = (st.st_mtime_ns, st.st_size, digest, mode)
        index.entries = entries
        return files, fresh

    def restore(self, files: dict[str, tuple[str, int]], contents: dict[str, bytes]) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        for rel, (digest, mode) in sorted(files.items()):
            full = self.resolve(rel)
            full.parent.mkdir(parents=True, exist_ok=True)
            if mode == _SYMLINK:
                os.symlink(contents[digest].decode(), full)
                continue
            full.write_bytes(contents[digest])
            os.chmod(full, mode)


# what the model sees of each tool: its parameters and description
def write_file(path: str, content: str) -> str:
    """Write a file in the project (a path relative to the project root), creating
    folders as needed; replaces the file if it exists."""
    raise NotImplementedError


def read_file(path: str) -> str:
    """Read a file of the project (a path relative to the project root)."""
    raise NotImplementedError


def list_files(path: str = ".") -> str:
    """List the project's files under a folder (relative path), with their sizes."""
    raise NotImplementedError


def run_command(command: str, timeout_seconds: float | None = None) -> str:
    """Run a shell command in the project's root folder (install, build, test, ...);
    returns its exit code and output. Files it changes are kept."""
    raise NotImplementedError


def _cut(text: str, most: int) -> str:
    if len(text) <= most:
        return text
    half = most // 2
    return f"{text[:half]}\n... ({len(text) - most} characters cut) ...\n{text[-half:]}"


class LocalSandboxes:
    """Sandboxes as directories under ``root`` on the worker's machine, with commands
    run as subprocesses under :class:`SandboxLimits`. Put ``sandboxes.tools()`` in an
    agent's tools; every worker that runs them needs its own ``LocalSandboxes`` (any
    root: a workspace that is not there is restored from its checkpoint)."""

    def __init__(self, root: str | os.PathLike[str], *,
                 limits: SandboxLimits | None = None) -> None:
        self.root = Path(root).absolute()
        self.limits = limits or SandboxLimits()
        self._tools: list[Tool] | None = None

    def workspace(self, key: str) -> Path:
        """The directory of the workspace of ``key`` (an agent run's workflow id)."""
        return _Workspace(self.root, key).dir

    # ------------------------------------------------------------ checkpoints
    async def _prepare(self, state: SandboxState) -> tuple[_Workspace, _IndexFile]:
        """The workspace, at the checkpoint ``state`` names (restored if it is not)."""
        ws = _Workspace(self.root, state.key)
        index = await asyncio.to_thread(ws.read_index)
        if index.checkpoint == (state.checkpoint or "") and ws.dir.is_dir() \
                and not ws.is_dirty():
            return ws, index
        files = await _load_manifest(state.checkpoint, state.owner)
        contents = await _load_contents(sorted({h for h, _ in files.values()}), state.owner)
        await asyncio.to_thread(ws.set_dirty, True)  # until the index says what it holds
        await asyncio.to_thread(ws.restore, files, contents)
        index = _IndexFile(checkpoint=state.checkpoint or "", stored_for=state.owner)
        # hash the restored files now: the next checkpoint then reads only changed ones
        await asyncio.to_thread(ws.scan, index, self.limits.max_workspace_bytes)
        await asyncio.to_thread(ws.write_index, index)
        await asyncio.to_thread(ws.set_dirty, False)
        activity.publish({"type": "sandbox_restored", "agent": state.agent,
                          "checkpoint": state.checkpoint, "files": len(files)},
                         workflow_id=state.stream_to or None)
        return ws, index

    async def _checkpoint(self, ws: _Workspace, index: _IndexFile, state: SandboxState,
                          changed: list[str] | None) -> str | None:
        """Store the workspace as it is now (``changed``: the only paths that may have
        changed; None: any); its checkpoint (None: empty)."""
        here = activity.info().workflow_id
        old_files = await _load_manifest(state.checkpoint, state.owner) \
            if state.checkpoint else {}
        if changed is not None:
            files, fresh = await asyncio.to_thread(ws.update, index, old_files, changed,
                                                   self.limits.max_workspace_bytes)
        else:
            files, fresh = await asyncio.to_thread(ws.scan, index,
                                                   self.limits.max_workspace_bytes)
        if files == old_files and index.stored_for == here:
            await asyncio.to_thread(ws.set_dirty, False)
            return state.checkpoint
        known = {h for h, _ in old_files.values()} if index.stored_for == here else set()
        needed = sorted({h for h, _ in files.values()} - known)
        missing = [h for h in needed if h not in fresh]
        if missing:  # unchanged files stored under another workflow: read them back here
            contents = await asyncio.to_thread(_read_by_hash, ws, files, set(missing))
            fresh.update(contents)
        await _store_in_chunks([fresh[digest] for digest in needed])
        checkpoint = None
        if files:
            (checkpoint,) = await activity.store_payloads(_encode_manifest(files))
            _remember_manifest(checkpoint, files)
        index.checkpoint, index.stored_for = checkpoint or "", here
        await asyncio.to_thread(ws.write_index, index)
        await asyncio.to_thread(ws.set_dirty, False)
        return checkpoint

    # ------------------------------------------------------------ the tools
    def tools(self) -> list[Tool]:
        """``write_file``, ``read_file``, ``list_files`` and ``run_command``, working in
        the agent run's workspace."""
        if self._tools is None:
            self._tools = [self._make_tool(signature, fn, mutates) for signature, fn, mutates in (
                (write_file, self._write_file, True), (read_file, self._read_file, False),
                (list_files, self._list_files, False),
                (run_command, self._run_command, True))]
        return list(self._tools)

    def _make_tool(self, signature: Any, fn: Any, mutates: bool) -> Tool:
        name = signature.__name__
        parameters, validate = _schema_and_validator(signature, name)
        limits = self.limits

        async def run_sandbox_tool(arguments: dict[str, Any],
                                   sandbox: SandboxState) -> SandboxToolResult:
            try:
                kwargs = validate(arguments)
            except ValueError as exc:
                raise ApplicationError(str(exc), type="ToolArgumentsError",
                                       non_retryable=True) from None
            ws = _Workspace(self.root, sandbox.key)
            beating = asyncio.ensure_future(_keep_heartbeating())
            try:
                await asyncio.to_thread(ws.meta.mkdir, parents=True, exist_ok=True)
                lock = await _acquire(ws)
                try:
                    # restoring and checkpointing are not interrupted halfway: the lock
                    # is released only once no thread of theirs still writes
                    ws, index = await _uninterrupted(self._prepare(sandbox))
                    if not mutates:
                        output = await _uninterrupted(_as_tool_error(fn(ws, **kwargs), name))
                        return SandboxToolResult(output=_cut(output, limits.max_output_chars))
                    await asyncio.to_thread(ws.set_dirty, True)
                    output, changed = await _as_tool_error(fn(ws, **kwargs), name)
                    checkpoint = await _uninterrupted(
                        self._checkpoint(ws, index, sandbox, changed))
                finally:
                    _release(lock)
            finally:
                beating.cancel()
            return SandboxToolResult(output=_cut(output, limits.max_output_chars),
                                     checkpoint=checkpoint, changed=True)

        run_sandbox_tool.__name__ = f"tool_{name}"
        run_sandbox_tool.__qualname__ = run_sandbox_tool.__name__
        timeout = limits.command_timeout + timedelta(minutes=1) if name == "run_command" \
            else timedelta(minutes=2)
        return Tool(
            name=name, description=(signature.__doc__ or name).strip(), fn=fn,
            parameters=parameters, start_to_close_timeout=timeout,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
            heartbeat_timeout=timedelta(seconds=30) if name == "run_command" else None,
            requires_approval=False,
            activity=activity.defn(name=ACTIVITY_PREFIX + name)(run_sandbox_tool),
            sandbox=True,
        )

    async def _write_file(self, ws: _Workspace, path: str,
                          content: str) -> tuple[str, list[str] | None]:
        target = ws.resolve(path)
        if target == ws.dir.resolve():
            raise ApplicationError("write_file needs the path of a file, not the project's "
                                   "root folder", type="ToolArgumentsError", non_retryable=True)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

        await asyncio.to_thread(write)
        rel = target.relative_to(ws.dir.resolve()).as_posix()
        return f"wrote {path} ({len(content.encode())} bytes)", [rel]

    async def _read_file(self, ws: _Workspace, path: str) -> str:
        target = ws.resolve(path)
        if not target.is_file():
            raise ApplicationError(f"there is no file {path!r} in the project",
                                   type="FileNotFound", non_retryable=True)
        data = await asyncio.to_thread(target.read_bytes)
        return data.decode(errors="replace")

    async def _list_files(self, ws: _Workspace, path: str = ".") -> str:
        top = ws.resolve(path)

        def walk() -> list[str]:
            lines = []
            for folder, dirs, names in os.walk(top):
                dirs.sort()
                for name in sorted(names):
                    full = Path(folder) / name
                    rel = full.relative_to(ws.dir.resolve()).as_posix()
                    lines.append(f"{rel} ({full.lstat().st_size} bytes)")
            return lines

        lines = sorted(await asyncio.to_thread(walk))
        return "\n".join(lines) if lines else "(no files)"

    async def _run_command(self, ws: _Workspace, command: str,
                           timeout_seconds: float | None = None) -> tuple[str, None]:
        limits = self.limits
        timeout = limits.command_timeout.total_seconds()
        if timeout_seconds is not None:
            timeout = max(1.0, min(timeout, timeout_seconds))
        memory = limits.memory_mb * 1024 * 1024

        def limit() -> None:  # in the child, before exec
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            # SIGXCPU at the limit (reported as such), SIGKILL a little later
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds,
                                                     limits.cpu_seconds + 5))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        tmp = ws.meta / "tmp"  # emptied around every command: no attempt sees another's
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        await asyncio.to_thread(tmp.mkdir)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ws.dir),
               "LANG": "C.UTF-8", "PWD": str(ws.dir), "TMPDIR": str(tmp),
               "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in every checkpoint
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=ws.dir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=limit,
        )
        chunks: list[bytes] = []
        kept = 0

        async def read() -> None:
            nonlocal kept
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if kept < 4 * limits.max_output_chars:
                    chunks.append(chunk)
                    kept += len(chunk)

        reader = asyncio.ensure_future(read())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        timed_out = False
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=1.0)
                    break
                except TimeoutError:
                    activity.heartbeat()
                    if loop.time() >= deadline:
                        timed_out = True
                        _kill_group(proc.pid)
                        await proc.wait()
                        break
        except BaseException:
            _kill_group(proc.pid)  # cancelled: the command goes with the attempt
            raise
        finally:
            _kill_group(proc.pid)  # whatever it left running in the background
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(reader, timeout=5)
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        output = b"".join(chunks).decode(errors="replace")
        code = proc.returncode
        if timed_out:
            head = f"timed out after {timeout:.0f} s: the command was killed"
        elif code is not None and code < 0:
            head = f"killed by signal {signal.Signals(-code).name}"
        else:
            head = f"exit code {code}"
        if code == -signal.SIGXCPU:
            head += f" (it used up its {limits.cpu_seconds} s of CPU time)"
        elif not timed_out and code and _looks_out_of_memory(code, output):
            head += (f" (it probably ran out of memory: the sandbox allows "
                     f"{limits.memory_mb} MB)")
        return (f"{head}\n{output}" if output else head), None  # it may change anything


def _looks_out_of_memory(code: int, output: str) -> bool:
    if code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT, 137, 134, 139):
        return True
    return any(s in output for s in ("MemoryError", "Cannot allocate memory", "bad_alloc",
                                     "out of memory"))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _acquire(ws: _Workspace) -> Any:
    """The workspace's lock (one attempt at a time: a stale one may still run); polled,
    so that waiting for it can be cancelled and holds no thread."""
    handle = open(ws.meta / _LOCK, "a+b")  # noqa: SIM115, ASYNC230 (held across awaits; local)
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                await asyncio.sleep(0.05)
    except BaseException:
        handle.close()
        raise


def _release(handle: Any) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


async def _keep_heartbeating() -> None:
    """Heartbeats while a sandbox call waits, restores or checkpoints (a command's own
    loop beats too): a slow phase is not mistaken for a dead worker."""
    while True:
        await asyncio.sleep(5.0)
        activity.heartbeat()


_DETERMINISTIC_OS_ERRORS = (IsADirectoryError, NotADirectoryError, FileExistsError,
                            FileNotFoundError, PermissionError)


async def _as_tool_error(call: Awaitable[T], tool: str) -> T:
    """Run a tool's own work; an error that its arguments cause, and that would come back
    on every retry (a path that is a folder, a name the file system cannot encode, a NUL
    byte), becomes a non-retryable tool error for the model instead of three attempts."""
    try:
        return await call
    except _DETERMINISTIC_OS_ERRORS as exc:
        why = exc.strerror or type(exc).__name__
        raise ApplicationError(f"{tool}: {why}" + (f": {exc.filename!r}" if exc.filename else ""),
                               type="ToolError", non_retryable=True) from None
    except (UnicodeError, ValueError) as exc:  # unencodable names, embedded NUL bytes
        raise ApplicationError(f"{tool}: {exc}", type="ToolArgumentsError",
                               non_retryable=True) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ApplicationError(f"{tool}: a file name is too long", type="ToolArgumentsError",
                                   non_retryable=True) from None
        raise


async def _uninterrupted(coro: Any) -> Any:
    """Run ``coro`` to its end even if cancelled meanwhile (then re-raise the cancel)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


def _read_by_hash(ws: _Workspace, files: dict[str, tuple[str, int]],
                  wanted: set[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for rel, (digest, mode) in files.items():
        if digest in wanted and digest not in found:
            full = ws.dir / rel
            found[digest] = os.readlink(full).encode() if mode == _SYMLINK \
                else full.read_bytes()
    return found
