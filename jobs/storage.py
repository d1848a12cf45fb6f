"""Where data lives: the one place that tells a local folder from a URI.

A ``Location`` is a file or folder on whatever file system holds it: a plain
or relative path (made absolute once, here), ``file:///abs/path``,
``hdfs://…``, ``s3://``/``s3a://…``, ``gs://…`` or any other URI pyarrow has a
file system for. Spark reads and writes ``location.uri``; every other read,
write, listing and existence check, on the driver or inside a Spark Python
worker or a training process, goes through ``location.fs`` (a
``pyarrow.fs.FileSystem``) and the methods below. A Location pickles as its
URI, so it can travel to executors; each process opens its file system once.

This module imports only pyarrow, so ``models/`` uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

#: Hadoop's names for object stores whose pyarrow file system has another scheme.
_PYARROW_SCHEMES = {"s3a": "s3", "s3n": "s3"}
#: File systems opened in this process, by (scheme, authority), with the prefix of their paths.
_FILESYSTEMS: dict[tuple[str, str], tuple[pafs.FileSystem, str]] = {}


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: str, dst: str, flags: int, *, what: str) -> bool:
    """Linux ``renameat2``; True when done, False when this system has no such call (nothing changed)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, "renameat2", None)
    if call is None:
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # the kernel or the file system does not support the flag
        return False
    if err == errno.EEXIST:
        raise StorageError(f"cannot rename {src} to {dst}: the destination exists")
    raise StorageError(f"cannot {what} {src} and {dst}: {os.strerror(err)}")


class StorageError(OSError):
    """A storage operation that could not be done; the message names the location."""


def to_uri(path: str) -> str:
    """A path or URI -> an absolute URI without a trailing '/'.

    Plain and relative paths (and Hadoop's ``file:/abs``) become
    ``file:///abs/path``; other URIs are kept as given.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ValueError(f"a storage location must be a non-empty path or URI, got {path!r}")
    if "://" in path:
        scheme, rest = path.split("://", 1)
        if scheme.lower() == "file":
            return "file://" + os.path.abspath("/" + rest.lstrip("/"))
        return f"{scheme.lower()}://{rest.rstrip('/')}" if rest.strip("/") else f"{scheme.lower()}://{rest}"
    if path.startswith("file:"):
        return "file://" + os.path.abspath("/" + path[len("file:"):].lstrip("/"))
    return "file://" + os.path.abspath(os.path.expanduser(path))


def _split(uri: str) -> tuple[str, str, str]:
    scheme, rest = uri.split("://", 1)
    authority, _, path = rest.partition("/")
    return scheme, authority, path


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    scheme, authority, path = _split(uri)
    if scheme == "file":
        if ("file", "") not in _FILESYSTEMS:
            _FILESYSTEMS["file", ""] = (pafs.LocalFileSystem(), "")
        return _FILESYSTEMS["file", ""][0], uri[len("file://"):]
    key = (scheme, authority)
    if key not in _FILESYSTEMS:
        try:
            fs, found = pafs.FileSystem.from_uri(f"{_PYARROW_SCHEMES.get(scheme, scheme)}://{authority}/{path}")
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError by scheme
            raise StorageError(
                f"{uri}: no file system for scheme '{scheme}' ({exc}); use a local folder, file://, hdfs:// "
                f"(needs libhdfs), s3:// or gs://"
            ) from None
        # How this file system spells a path: "bucket/key" (object stores), "/path" (HDFS) or "path".
        prefix = found[: len(found) - len(path)] if found.endswith(path) else f"{authority}/"
        _FILESYSTEMS[key] = (fs, prefix)
    fs, prefix = _FILESYSTEMS[key]
    return fs, prefix + path


class Location:
    """A file or folder on the file system its URI names.

    Args:
        path: a local path (relative paths are made absolute now) or a URI.
    """

    __slots__ = ("uri",)

    def __init__(self, path: "str | os.PathLike | Location"):
        self.uri = path.uri if isinstance(path, Location) else to_uri(path)

    # -- identity ------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self):
        return (Location, (self.uri,))

    def __truediv__(self, name: str) -> "Location":
        name = str(name).strip("/")
        if not name:
            return self
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"{self.uri}: bad child name {name!r}")
        return Location(f"{self.uri}/{name}")

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        head = self.uri.rsplit("/", 1)[0]
        if head.endswith("://"):  # a child of the local root
            return Location(head + "/")
        return Location(head) if not head.endswith(":/") else self

    def relative_to(self, root: "Location") -> str:
        """This location's path below ``root`` ('a/b'); ValueError when it is not below it."""
        if self.uri == root.uri:
            return ""
        if not self.uri.startswith(root.uri + "/"):
            raise ValueError(f"{self.uri} is not below {root.uri}")
        return self.uri[len(root.uri) + 1:]

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow file system holding this location (opened once per process)."""
        return _filesystem(self.uri)[0]

    @property
    def path(self) -> str:
        """This location's path inside ``fs``."""
        return _filesystem(self.uri)[1]

    @property
    def is_local(self) -> bool:
        return self.uri.startswith("file://")

    @property
    def local_path(self) -> str | None:
        """The path on this machine's disk, or None for any other file system."""
        return self.uri[len("file://"):] if self.is_local else None

    def display(self) -> str:
        """How to show this location to a person: the plain path when local, else the URI."""
        return self.local_path or self.uri

    # -- queries -------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def mtime_ns(self) -> int:
        """Modification time (ns) of a file, or of the newest file below a folder; 0 when missing."""
        info = self._info()
        if info.type == pafs.FileType.File:
            return int(info.mtime_ns or 0)
        if info.type != pafs.FileType.Directory:
            return 0
        entries = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return max((int(e.mtime_ns or 0) for e in entries if e.type == pafs.FileType.File), default=0)

    def list(self) -> list["Location"]:
        """The direct children of a folder, by name ([] when it does not exist)."""
        if not self.is_dir():
            return []
        entries = self.fs.get_file_info(pafs.FileSelector(self.path))
        return [self / os.path.basename(e.path.rstrip("/")) for e in sorted(entries, key=lambda e: e.path)]

    def names(self) -> list[str]:
        """Names of the direct children of a folder, sorted ([] when it does not exist)."""
        return [child.name for child in self.list()]

    def files(self, suffix: str = "") -> list["Location"]:
        """The data files at this location: the file itself, or every file below the folder whose
        path (below it) has no part starting with '_' or '.', ending in ``suffix``, sorted."""
        info = self._info()
        if info.type == pafs.FileType.File:
            return [self]
        if info.type != pafs.FileType.Directory:
            return []
        base = self.path.rstrip("/")
        found = []
        for entry in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            rel = entry.path[len(base) + 1:]
            if (entry.type == pafs.FileType.File and rel.endswith(suffix)
                    and not any(part.startswith(("_", ".")) for part in rel.split("/"))):
                found.append(rel)
        return [self / rel for rel in sorted(found)]

    def parquet_dataset(self) -> pads.Dataset:
        """The Parquet files at this location (``files(".parquet")``) as one pyarrow dataset."""
        files = self.files(".parquet")
        if not files:
            raise FileNotFoundError(f"{self.display()}: no Parquet files")
        return pads.dataset([f.path for f in files], format="parquet", filesystem=self.fs)

    # -- reading and writing ---------------------------------------------------------------
    def read_parquet(self, columns: list[str] | None = None) -> pa.Table:
        """The Parquet data files of ``files(".parquet")`` as one pyarrow table (small tables, on the driver)."""
        return self.parquet_dataset().to_table(columns=columns)

    def open_input(self):
        """A random-access pyarrow file (e.g. for ``pyarrow.parquet.ParquetFile``)."""
        try:
            return self.fs.open_input_file(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.display()}: no such file") from None

    def read_bytes(self) -> bytes:
        with self.open_input() as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file; readers see the old file or the new one, never a part of it.

        On a local disk the file is written under a temporary name and renamed;
        object stores make a whole-object write visible at once.
        """
        self.parent.mkdirs()
        if self.is_local:
            tmp = f"{self.local_path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.local_path)
            return
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def mkdirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Remove the file or folder (and everything below it); nothing happens when it is missing."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def move_to(self, destination: "Location") -> None:
        """Rename this file or folder to ``destination``, which must not exist.

        Refusing an existing destination matters: Hadoop's rename onto an
        existing folder moves the source *inside* it. On a local disk the
        refusal is atomic (``renameat2`` with RENAME_NOREPLACE), so of two
        processes racing for one destination exactly one wins; elsewhere it is
        checked just before the rename.
        """
        if not self.exists():
            raise StorageError(f"cannot rename {self.display()}: it does not exist")
        destination.parent.mkdirs()
        if self.is_local and destination.is_local and _renameat2(self.local_path, destination.local_path,
                                                                 _RENAME_NOREPLACE, what="rename"):
            return
        if destination.exists():
            raise StorageError(f"cannot rename {self.display()} to {destination.display()}: the destination exists")
        self.fs.move(self.path, destination.path)

    def swap_with(self, other: "Location") -> bool:
        """Exchange this folder and ``other`` in one atomic step, where the file system can (a local disk).

        Returns:
            True when swapped atomically; False when this file system cannot, and nothing was changed.
        """
        if not (self.is_local and other.is_local):
            return False
        return _renameat2(self.local_path, other.local_path, _RENAME_EXCHANGE, what="swap")

    def create_exclusive(self, text: str) -> bool:
        """Create this file with ``text`` unless it exists; True when this call created it.

        Atomic on a local disk (``O_CREAT | O_EXCL``): of two processes, exactly one creates it. Other
        file systems are checked just before writing (object stores have no exclusive create).
        """
        self.parent.mkdirs()
        if self.is_local:
            try:
                fd = os.open(self.local_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            return True
        if self.exists():
            return False
        self.write_text(text)
        return True

    def copy_to(self, destination: "Location") -> None:
        """Copy this file, or this folder's contents, to ``destination`` (any file system; folders created,
        existing files replaced)."""
        if self.is_dir():
            destination.mkdirs()
        else:
            destination.parent.mkdirs()
        pafs.copy_files(self.path, destination.path, source_filesystem=self.fs, destination_filesystem=destination.fs)

    @contextlib.contextmanager
    def local_folder(self) -> Iterator[str]:
        """A local folder with this folder's contents, for code that needs a real path (e.g. Keras loading).

        Local: the folder itself. Elsewhere: a temporary copy, removed afterwards.
        """
        if self.is_local:
            yield self.local_path
            return
        tmp = tempfile.mkdtemp(prefix="nightrec-")
        try:
            self.copy_to(Location(tmp))
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def writing_folder(self) -> Iterator[str]:
        """A local folder whose contents become this folder's when the block ends without an error.

        Local: the folder itself (created). Elsewhere: a temporary folder, copied up afterwards.
        """
        if self.is_local:
            self.mkdirs()
            yield self.local_path
            return
        tmp = tempfile.mkdtemp(prefix="nightrec-")
        try:
            yield tmp
            Location(tmp).copy_to(self)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
