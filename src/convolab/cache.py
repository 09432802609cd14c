"""The chooser's cache files: autotune results and machine calibrations.

JSON files in ``$CONVOLAB_CACHE_DIR`` or the platform's user cache directory (`cache_dir`).
Writers take an inter-process lock (`filelock`) and replace the file atomically (temporary
file + rename), so concurrent processes never leave it corrupt; a corrupt or foreign file is
ignored with a warning and rewritten. Entries are keyed by the convolution (autotune), the
thread count, the CPU model and the convolab version (`cache_key`, `machine_key`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

from ._machine import cpu_model
from ._machine import threads as _threads
from ._version import __version__
from .spec import ConvSpec

AUTOTUNE_FORMAT = "convolab-autotune"
CALIBRATION_FORMAT = "convolab-calibration"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """``$CONVOLAB_CACHE_DIR``, else the platform's user cache directory for convolab
    (`platformdirs`: ``$XDG_CACHE_HOME/convolab`` or ``~/.cache/convolab`` on Linux,
    ``~/Library/Caches/convolab`` on macOS, ``%LOCALAPPDATA%\\convolab\\Cache`` on Windows)."""
    env = os.environ.get("CONVOLAB_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs  # here, not at import: `import convolab` stays light (3 ms)

    return Path(platformdirs.user_cache_dir("convolab", appauthor=False))


@contextlib.contextmanager
def _locked(path: Path):
    """Inter-process lock on ``path.lock`` (`filelock`: fcntl / msvcrt, every OS)."""
    import filelock  # on a write only: importing it took 27 ms of `import convolab`

    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock"):
        yield


def _read_json(path: Path, fmt: str) -> dict:
    """The file's ``entries`` dict; {} (with a warning) when missing-but-corrupt or foreign."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        warnings.warn(f"convolab: cannot read cache file {path}: {e}; ignoring it", stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != fmt or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {fmt} v{FORMAT_VERSION} file")
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("entries is not an object")
        return entries
    except (ValueError, KeyError, TypeError) as e:
        warnings.warn(f"convolab: ignoring corrupt or foreign cache file {path} ({e}); it will be rewritten",
                      stacklevel=3)
        return {}


def _write_json(path: Path, fmt: str, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": fmt, "version": FORMAT_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _update_json(path: Path, fmt: str, key: str, value) -> None:
    with _locked(path):
        entries = _read_json(path, fmt)
        entries[key] = value
        _write_json(path, fmt, entries)


class _FileCache:
    """In-process view of a cache file, re-read when its mtime changes."""

    def __init__(self, name: str, fmt: str):
        self.name, self.fmt = name, fmt
        self._lock = threading.Lock()
        self._stamp = None
        self._entries: dict = {}

    @property
    def path(self) -> Path:
        return cache_dir() / self.name

    def stamp(self):
        """Identifies the file's current state (path, mtime, size)."""
        path = self.path
        try:
            st = path.stat()
            return (str(path), st.st_mtime_ns, st.st_size)
        except OSError:
            return (str(path), None, None)

    def entries(self) -> dict:
        stamp = self.stamp()
        with self._lock:
            if stamp != self._stamp:
                self._entries = _read_json(Path(stamp[0]), self.fmt) if stamp[1] is not None else {}
                self._stamp = stamp
            return self._entries

    def put(self, key: str, value) -> None:
        _update_json(self.path, self.fmt, key, value)


AUTOTUNE = _FileCache("autotune.json", AUTOTUNE_FORMAT)
CALIBRATION = _FileCache("calibration.json", CALIBRATION_FORMAT)


def cache_key(spec: ConvSpec, threads: int | None = None) -> str:
    """Autotune key: the convolution, dtype, thread count, CPU model and convolab version."""
    s = spec
    return json.dumps(
        {
            "conv": [s.N, s.C, s.H, s.W, s.K, s.R, s.S, list(s.stride), list(s.padding), list(s.dilation), s.groups],
            "dtype": str(s.dtype),
            "threads": _threads() if threads is None else threads,
            "cpu": cpu_model(),
            "version": __version__,
        },
        sort_keys=True,
    )


def machine_key(threads: int | None = None) -> str:
    return json.dumps(
        {"threads": _threads() if threads is None else threads, "cpu": cpu_model(), "version": __version__},
        sort_keys=True,
    )
