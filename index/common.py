"""Shared pieces of the index package: the error type, stable ids, atomic files and folders, ``index.json``.

Nothing here imports torch (the query path imports this module).

Ids: a sample's int64 FAISS id is the first 63 bits of ``blake2b(key)``, so it depends on the key alone
(never on row order), the same key always maps to the same id, and ids are non-negative (SQLite
INTEGER PRIMARY KEY, FAISS ``idx_t``; -1 stays FAISS's "no result"). :func:`ids_for_keys` checks that
distinct keys did not collide.

Atomic folders: :func:`write_folder` writes a new folder under a temp name and renames it into place;
:func:`update_folder` copies a folder (hard links for files that are only ever replaced, a real copy of
the SQLite database), lets the caller change the copy, then swaps it in. A failure midway leaves the
previous folder as it was, and removes the temp folder.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

INFO_NAME = "index.json"
FAISS_NAME = "index.faiss"
IVFDATA_NAME = "index.ivfdata"
IDS_NAME = "ids.npy"
META_NAME = "meta.sqlite"
ONNX_NAME = "text.onnx"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1
ID_MASK = (1 << 63) - 1


class UserError(Exception):
    """A bad input or an inconsistent file: reported as one ``error: ...`` line, never a traceback."""


# ----------------------------------------------------------------------------------------------- ids


def key_to_id(key: str) -> int:
    """Stable non-negative 63-bit id of a sample key (blake2b, first 8 bytes, top bit cleared)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ID_MASK


def ids_for_keys(keys: Iterable[str]):
    """``np.int64`` ids of ``keys``; raises :class:`UserError` on a repeated key or a hash collision."""
    import numpy as np

    keys = list(keys)
    ids = np.fromiter((key_to_id(k) for k in keys), dtype=np.int64, count=len(keys))
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise UserError(f"sample key {dup!r} occurs more than once: keys must be unique")
    if len(np.unique(ids)) != len(ids):
        by_id: dict[int, str] = {}
        for k, i in zip(keys, ids.tolist()):
            if i in by_id:
                raise UserError(f"id collision: keys {by_id[i]!r} and {k!r} hash to the same id {i}")
            by_id[i] = k
    return ids


# --------------------------------------------------------------------------------------- atomic files


def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{tag}{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write through a temp file + rename: readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """``with replacing(p) as tmp: write(tmp)``: ``tmp`` is renamed over ``p`` on success only.

    For writers that take a file name (``faiss.write_index``): a hard-linked old file is never
    written through, its directory entry is replaced."""
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """Send the C library's stdout (file descriptor 1) to /dev/null: faiss prints notes with printf
    (e.g. when an on-disk index is opened from a moved folder), which would corrupt ``--json`` output."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def read_faiss(path: str | os.PathLike, on_disk: bool = False, mmap: bool = False):
    """``faiss.read_index`` for our folders. On-disk IVF (``index.ivfdata`` beside the file): read-only and
    found in the same folder wherever it moved; its lists are memory-mapped by faiss itself (combining this
    with ``IO_FLAG_MMAP`` crashes faiss 1.15). ``mmap``: ``IO_FLAG_MMAP`` for an in-RAM index file."""
    import faiss

    if on_disk:
        with c_stdout_silenced():
            return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR)
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)


def write_folder(out_dir: str | os.PathLike, write: Callable[[Path], None], base: str | os.PathLike | None = None,
                 copy_names: Iterable[str] = ()) -> Path:
    """Build a folder in a temp sibling and rename it to ``out_dir``.

    ``base``: start from a copy of this folder (files hard-linked where possible, ``copy_names`` really
    copied because they are changed in place). ``write(tmp)`` then changes the temp folder. If it raises,
    ``out_dir`` is untouched and the temp folder removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if base is not None:
            copy_names = set(copy_names)
            for src in Path(base).iterdir():
                if not src.is_file():
                    continue
                dst = tmp / src.name
                if src.name in copy_names:
                    shutil.copy2(src, dst)
                else:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out_dir)
    return out_dir


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``, moving a previous ``out_dir`` aside first and deleting it after."""
    if out_dir.exists():
        old = _tmp_name(out_dir, "old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:
            old.rename(out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def update_folder(index_dir: str | os.PathLike, change: Callable[[Path], None]) -> Path:
    """Apply ``change(copy)`` to a copy of an index folder and swap it in atomically."""
    return write_folder(index_dir, change, base=index_dir, copy_names=(META_NAME,))


# ------------------------------------------------------------------------------------------ index.json


def read_info(index_dir: str | os.PathLike) -> dict:
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise UserError(f"index folder {index_dir} not found: build one with `python -m index build`")
    path = index_dir / INFO_NAME
    if not path.is_file():
        raise UserError(f"{index_dir} is not an index folder ({INFO_NAME} is missing): "
                        "build one with `python -m index build`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from e
    for field in ("dim", "count", "factory"):
        if field not in info:
            raise UserError(f"{path} has no {field!r}: not an index built by `python -m index build`")
    return info


def same_model(recorded: dict, other: dict) -> str | None:
    """None when two model descriptions (``embed.describe_model``) agree, else why they differ: the
    dimension, or the probe text embedding (cosine < 0.999: other weights under the same name)."""
    if recorded.get("dim") != other.get("dim"):
        return (f"model {recorded.get('name')!r} gives {recorded.get('dim')}-d embeddings, "
                f"model {other.get('name')!r} {other.get('dim')}-d")
    a, b = recorded.get("probe"), other.get("probe")
    if a and b and len(a) == len(b):
        dot = sum(x * y for x, y in zip(a, b))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5 or 1.0
        if dot / norm < 0.999:
            return (f"model {recorded.get('name')!r} and model {other.get('name')!r} embed the same text differently "
                    f"(cosine {dot / norm:.3f})")
    return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def parse_memory(text: str | int | float) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"``, or a number of bytes -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise UserError(f"cannot read memory size {text!r}: use e.g. 4G, 512M, 1.5GB or a number of bytes")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise UserError(f"memory size must be > 0, got {text!r}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
