"""Directories written for a user (an edited model, a saved editor): checked before any work,
built beside their destination and swapped in atomically, and never deleted unless this
project wrote them.

An export holds MARKER, a JSON record of its kind and of every file it wrote with its size.
A destination may be replaced only if it is missing, empty, or an export of the same kind
whose files are exactly those its marker lists. A user's files, an export a user has added
to or changed, a run directory or any other directory is refused before any work starts.

Replacing is atomic where the kernel can exchange two directories (Linux's
renameat2(RENAME_EXCHANGE)): the destination holds the old export or the new one at every
instant. Elsewhere the old export is first renamed to a hidden sibling
`.NAME.previous-*`; a kill between that rename and the next leaves it there, and the next
export to NAME puts it back before it starts.
"""
import ctypes
import ctypes.util
import errno
import glob
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional

MARKER = ".mend_jax_export.json"
METRICS_FILE = "metrics.json"  # an edit's metrics, inside its export (or RUN/edits/)
MODEL, EDITOR = "edited model", "editor"
# Files a saved editor held before exports carried a marker (editing/editor_files.py).
_LEGACY_EDITOR_FILES = {"editor.json", "editor.safetensors"}
SPACE_MARGIN = 1.1  # the free space asked for, over the export's estimated size


class OutputError(OSError):
    """An output location that cannot or must not be written; the message names the path."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def _stage(name: str) -> None:
    """Called after each step of a write (tests stop the process here to check atomicity)."""


def _files_under(directory: str) -> Dict[str, int]:
    """Relative path -> size of every file under `directory`, the marker excepted."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel != MARKER:
                found[rel] = os.path.getsize(path)
    return found


def _marker(directory: str) -> Optional[Dict]:
    try:
        with open(os.path.join(directory, MARKER)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def export_kind(directory: str) -> Optional[str]:
    """The kind of export `directory` is, if this project wrote it and nobody changed it since."""
    record, present = _marker(directory), _files_under(directory)
    if record is not None:
        return record.get("kind") if record["files"] == present else None
    if not os.path.exists(os.path.join(directory, MARKER)) and set(present) == _LEGACY_EDITOR_FILES:
        return EDITOR
    return None


def _changes(directory: str) -> str:
    """What differs between an export's files and its marker's record of them."""
    recorded, present = _marker(directory)["files"], _files_under(directory)
    parts = [(what, sorted(names)) for what, names in (
        ("added", set(present) - set(recorded)), ("removed", set(recorded) - set(present)),
        ("changed", {n for n in set(present) & set(recorded) if present[n] != recorded[n]})) if names]
    return "; ".join(f"{what}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}" for what, names in parts)


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _refuse_to_replace(path: str, kind: str) -> Optional[str]:
    """Why `path` (an existing directory) must not be replaced by a `kind` export, or None."""
    try:
        entries = os.listdir(path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not entries:
        return None
    found = export_kind(path)
    if found == kind:
        return None
    if found is not None:
        return f"holds a saved {found}, not an {kind}" if kind == MODEL else f"holds an {found}, not a saved {kind}"
    if _marker(path) is not None:
        return (f"is an export of mend_jax's that has changed since it was written ({_changes(path)}); its files "
                "would be lost. Name a new directory, or move the files you added")
    shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
    return (f"is not empty and was not written by mend_jax ({shown}); its files would be lost. "
            "Name a new directory, or an earlier export of mend_jax's")


def check_output_dir(path: str, kind: str, needed_bytes: int = 0, flag: str = "") -> None:
    """Raises OutputError, before any work, unless a `kind` export of about `needed_bytes` can
    be written to `path` without losing anything. `flag` names the option in the message."""
    name = f"{flag} {path}" if flag else path
    path = os.path.abspath(path)
    _restore_interrupted_swap(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{name} is a file, not a directory; name a directory for the {kind}")
    if os.path.isdir(path):
        reason = _refuse_to_replace(path, kind)
        if reason:
            raise OutputError(f"{name} {reason}")
    check_writable(os.path.dirname(path), name)
    free = shutil.disk_usage(_nearest_existing(os.path.dirname(path))).free
    if needed_bytes and free < SPACE_MARGIN * needed_bytes:
        raise OutputError(f"{name}: not enough disk space for the {kind}: {free / 2**20:.0f} MiB free, about "
                          f"{SPACE_MARGIN * needed_bytes / 2**20:.0f} MiB needed")


def check_writable(directory: str, name: str) -> None:
    """Raises OutputError unless files can be made in `directory` (created if missing): tried,
    since permission bits do not tell (root, read-only mounts, /proc)."""
    directory = os.path.abspath(directory)
    base = _nearest_existing(directory)
    if not os.path.isdir(base):
        raise OutputError(f"{name}: {base} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".mend_jax_write_test-", dir=base)
        os.rmdir(probe)
    except OSError as e:
        raise OutputError(f"{name}: {base} is not writable ({e.strerror})") from None


def write_dir(path: str, kind: str, fill: Callable[[str], None]) -> None:
    """Writes a `kind` export to `path`: `fill(tmp)` writes its files into a hidden sibling, the
    marker is added, and the sibling replaces `path` atomically. On any error nothing is left
    behind and `path` is as it was."""
    check_output_dir(path, kind)
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        fill(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"kind": kind, "files": _files_under(tmp)}, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the export from other users
        _stage("written")
        _swap_in(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the partial export, or the replaced one


def _swap_in(tmp: str, path: str) -> None:
    """Puts directory `tmp` at `path`; an earlier `path` ends up at `tmp` (removed by the caller)."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _stage("swapped")
        return
    if _exchange(tmp, path):
        _stage("swapped")
        return
    previous = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.previous-", dir=os.path.dirname(path))
    os.rmdir(previous)
    os.rename(path, previous)
    _stage("moved aside")
    os.rename(tmp, path)
    _stage("swapped")
    shutil.rmtree(previous)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (renameat2 with RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a filesystem or kernel without it
        return False
    raise OSError(err, os.strerror(err), b)


def _restore_interrupted_swap(path: str) -> None:
    """Puts back an export that a killed two-rename swap left at `.NAME.previous-*`."""
    if os.path.lexists(path):
        return
    parent, base = os.path.split(path)
    for previous in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.previous-*"))):
        if export_kind(previous) is not None:
            os.rename(previous, path)
            return


def export_bytes(tree) -> int:
    """The size of `tree`'s arrays when written in float32 or wider (bfloat16 is written as float32)."""
    import jax

    return sum(x.size * max(4, x.dtype.itemsize) for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype"))
