"""autodiff's on-disk cache of built kernel binaries.

An entry is one built OpenCL program (`clGetProgramInfo(CL_PROGRAM_BINARIES)`, which on
PoCL carries the work-group functions generated at its first launches too), filed under a
SHA-256 of everything that decides the binary: the source, the build options, the launch
sizes it was warmed up with, and the device, platform and driver versions. Loading an entry
is ~10 ms per program where building from source takes seconds.

A file holds a magic line, the SHA-256 of its payload and the payload; a file that is
truncated, altered or unreadable is deleted and the program built again, never a crash.
Entries are written to a temporary name and renamed, so readers in other processes never
see half a file. The cache keeps at most `LIMIT_BYTES`, dropping the least recently used.

    AUTODIFF_CACHE_DIR    where the cache lives (default: $XDG_CACHE_HOME/autodiff or ~/.cache/autodiff)
    python -m autodiff.backends.kernel_cache [info | clear]

This module imports only the standard library: the build worker process uses it too.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

MAGIC = b"autodiff-kernel-binary 1\n"
SUFFIX = ".bin"
LIMIT_BYTES = 2 << 30


def cache_dir() -> Path:
    chosen = os.environ.get("AUTODIFF_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autodiff" / "kernels"


def entry_key(*parts: str) -> str:
    """The SHA-256 of `parts`, each one length-prefixed (so no two part lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / (key + SUFFIX)


def load(key: str) -> bytes | None:
    """The payload stored under `key`, or None (a damaged entry is removed)."""
    path = _path(key)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header = len(MAGIC) + 65
    if (data[:len(MAGIC)] == MAGIC and len(data) > header
            and hashlib.sha256(data[header:]).hexdigest().encode() == data[len(MAGIC):header - 1]):
        try:
            os.utime(path)    # recently used: pruned last
        except OSError:
            pass
        return data[header:]
    discard(key)
    return None


def discard(key: str) -> None:
    try:
        _path(key).unlink()
    except OSError:
        pass


def store(key: str, payload: bytes) -> None:
    """Write an entry atomically; a cache that cannot be written is skipped silently (it is
    only a cache)."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        os.replace(temporary, _path(key))
    except OSError:
        return
    prune()


def entries() -> list[Path]:
    try:
        return sorted(cache_dir().glob("*" + SUFFIX))
    except OSError:
        return []


def prune(limit: int = LIMIT_BYTES) -> None:
    """Remove the least recently used entries until the cache holds at most `limit` bytes."""
    sized = []
    for path in entries():
        try:
            stat = path.stat()
        except OSError:
            continue
        sized.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in sized)
    for _, size, path in sorted(sized):
        if total <= limit:
            break
        try:
            path.unlink()
            total -= size
        except OSError:
            pass


def clear() -> int:
    """Remove every entry (and stray temporary files); the number of entries removed."""
    removed = 0
    for path in entries() + sorted(cache_dir().glob("*.tmp")):
        try:
            path.unlink()
            removed += path.suffix == SUFFIX
        except OSError:
            pass
    return removed


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "info"
    if command == "clear":
        print(f"removed {clear()} entries from {cache_dir()}")
    elif command == "info":
        files = entries()
        size = sum(p.stat().st_size for p in files if p.exists())
        print(f"{cache_dir()}: {len(files)} entries, {size / 2**20:.1f} MiB (limit {LIMIT_BYTES / 2**30:.0f} GiB)")
    else:
        print("usage: python -m autodiff.backends.kernel_cache [info | clear]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
