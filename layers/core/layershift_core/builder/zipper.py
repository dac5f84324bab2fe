"""A deterministic layer zip: the same tree always gives the same bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

# The earliest time a zip entry can carry; used for every entry.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
DIR_MODE = 0o755
COMPRESS_LEVEL = 6
_UNIX = 3
_MSDOS_DIRECTORY = 0x10


def _entries(root: Path) -> list[tuple[str, Path, bool]]:
    found: list[tuple[str, Path, bool]] = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(current)
        for name in dirs:
            path = here / name
            found.append((path.relative_to(root).as_posix() + "/", path, True))
        for name in files:
            path = here / name
            found.append((path.relative_to(root).as_posix(), path, False))
    return sorted(found, key=lambda entry: PurePosixPath(entry[0]).parts)


def _info(arcname: str, mode: int, is_dir: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=FIXED_DATE_TIME)
    info.create_system = _UNIX
    info.create_version = 20
    info.extract_version = 20
    info.extra = b""
    info.comment = b""
    if is_dir:
        info.external_attr = ((stat.S_IFDIR | mode) << 16) | _MSDOS_DIRECTORY
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = (stat.S_IFREG | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_zip(root: Path, zip_path: Path) -> None:
    """Zip everything under ``root`` (paths relative to it) into ``zip_path``, deterministically.

    Entries are sorted, every timestamp is 1980-01-01 00:00:00, files are 0644 (0755 when any
    execute bit is set), folders 0755, and no extra fields or comments are written.
    """
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
        for arcname, path, is_dir in _entries(root):
            if is_dir:
                zf.writestr(_info(arcname, DIR_MODE, True), b"")
                continue
            st = path.stat()
            mode = EXECUTABLE_MODE if st.st_mode & 0o111 else FILE_MODE
            info = _info(arcname, mode, False)
            info.file_size = st.st_size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=st.st_size > 0x7FFFFFFF) as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_size(root: Path) -> int:
    """Bytes of every regular file under ``root`` (what the layer takes once unzipped)."""
    total = 0
    for current, _dirs, files in os.walk(root):
        for name in files:
            total += Path(current, name).stat().st_size
    return total
