"""Creating a file that must not replace another: keys, policies, reports."""

from __future__ import annotations

import os
from pathlib import Path

from fedllm.errors import FedLLMError


def write_new(path: Path, data: bytes, mode: int, error: type[FedLLMError], what: str = "") -> None:
    """Create ``path`` holding ``data`` with exactly ``mode``, atomically: a reader (or a crash)
    sees no file or the whole file, and an existing file is never replaced. Failures raise
    ``error`` naming the path (``what`` says what the file is, e.g. "site key")."""
    name = f"{what} {path}" if what else str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a crash of an earlier process with this pid
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask must neither widen nor narrow it
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)  # unlike rename, fails if ``path`` exists
    except FileExistsError:
        raise error(f"{name} already exists; not overwriting it") from None
    except OSError as err:
        raise error(f"cannot write {name}: {err.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
