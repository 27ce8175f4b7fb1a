"""Reading data files with errors that name the file and say what to do, and writing JSON whole."""
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Callable, List


class DataNotFoundError(FileNotFoundError):
    """A data file is missing; the message says where to get it."""


class DataFormatError(ValueError):
    """A data file exists but does not have the published format."""


def require_file(path: str, hint: str) -> None:
    if os.path.isdir(path):
        raise DataNotFoundError(f"{path} is a directory, not a file. {hint}")
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path} does not exist. {hint}")


def decode_utf8(raw: bytes, where: str) -> str:
    """`raw` as text, or a DataFormatError naming `where` and the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset {e.start}); "
                              "save the file as UTF-8") from None


def read_json(path: str, hint: str) -> Any:
    require_file(path, hint)
    with open(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _count_lines(path: str) -> int:
    """Counts lines without holding the file (wiki.train.raw is ~500 MB)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")  # a last line without a newline still counts


def read_lines(path: str, hint: str, pct: float = 100.0) -> List[str]:
    """The first `pct` percent of the file's lines, newlines kept.

    This is the `split[:pct%]` of a line-per-row dataset such as Hugging Face's
    wikitext (whose rows keep their trailing newline), rounded to the closest line.
    """
    require_file(path, hint)
    if not 0 < pct <= 100:
        raise ValueError(f"pct must be in (0, 100], got {pct}")
    n_keep = None if pct == 100 else int(round(_count_lines(path) * pct / 100))
    # Undecodable bytes become U+FFFD, which the ASCII filter then drops.
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(itertools.islice(f, n_keep))


def write_json_atomically(path: str, obj: Any, **dump_kwargs) -> None:
    """`obj` as JSON at `path`, whole or not at all (a reader never sees half a file): written to a
    temporary file beside it (os.replace stays on one file system), which a failure removes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def publish_directory(directory: str, write: Callable[[str], None], marker: str) -> None:
    """Builds `directory` whole or not at all: `write(tmp)` fills a temporary directory beside it,
    which is then renamed into place. When another process published it first (its `marker`
    file exists), that one stays: both built the same."""
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(directory))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, directory)
    except OSError:
        if not os.path.isfile(os.path.join(directory, marker)):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
