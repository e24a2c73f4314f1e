"""WebDataset shards: a deterministic writer and a fault-tolerant sample decoder.

Layout follows img2dataset / WebDataset: one tar per shard, samples grouped by key,
members ``{key}.png|jpg`` (image), ``{key}.txt`` (one caption) and ``{key}.json``
(metadata: captions per language, names, keywords, split, source).

The writer is deterministic (fixed mtime/uid/gid, sorted members) so the same inputs
give byte-identical shards, and it writes each tar atomically (temp file + rename).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode())


def write_folder_atomically(out_dir: str | os.PathLike, write: Callable[[Path], None],
                            extra_files: dict[str, Any] | None = None) -> Path:
    """Call ``write(tmp)`` on a fresh temp folder, add ``extra_files`` (name -> str/bytes/JSON), then
    rename it to ``out_dir``: a crash midway leaves any previous folder intact."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for name, content in (extra_files or {}).items():
            data = content if isinstance(content, (str, bytes)) else json.dumps(content, indent=2, ensure_ascii=False)
            (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir


class ShardWriter:
    """Write samples into ``{prefix}-{i:06d}.tar`` shards of at most ``maxcount`` samples.

    Each sample is a dict ``{"__key__": str, ext: bytes | str | dict}``.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str, maxcount: int = 1000):
        if maxcount <= 0:
            raise ValueError(f"maxcount must be > 0, got {maxcount}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.maxcount = maxcount
        self.shards: list[str] = []
        self.count = 0
        self._buf: list[dict] = []

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        self._buf.append(sample)
        self.count += 1
        if len(self._buf) >= self.maxcount:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        bio = io.BytesIO()
        with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in self._buf:
                key = sample["__key__"]
                for ext in sorted(k for k in sample if k != "__key__"):
                    data = _encode(sample[ext])
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                    tar.addfile(ti, io.BytesIO(data))
        atomic_write_bytes(self.out_dir / name, bio.getvalue())
        self.shards.append(name)
        self._buf = []

    def close(self) -> list[str]:
        self._flush()
        return self.shards

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


# --------------------------------------------------------------------------- reading


@dataclass
class DecodeStats:
    """Counts of samples decoded and skipped (with reasons), for logging after a pass."""

    ok: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, key: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.warning("skipping sample %s: %s", key, reason)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def decode_sample(sample: dict, stats: DecodeStats | None = None) -> dict | None:
    """Decode a raw WebDataset sample to ``{"key", "image": PIL.Image, "meta": dict}``.

    Returns ``None`` (and counts the reason) for a sample whose image or JSON is corrupt,
    so one bad file never stops a run.
    """
    from PIL import Image, UnidentifiedImageError

    key = sample.get("__key__", "?")
    stats = stats if stats is not None else DecodeStats()
    img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if img_ext is None:
        stats.skip("no image", key)
        return None
    try:
        image = Image.open(io.BytesIO(sample[img_ext]))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        stats.skip(f"corrupt image ({type(e).__name__})", key)
        return None
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            stats.skip("corrupt json", key)
            return None
    if "txt" in sample and not meta.get("captions"):
        try:
            txt = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            stats.skip("corrupt txt", key)
            return None
        if txt:
            meta["captions"] = {"und": [txt]}
    stats.ok += 1
    return {"key": key, "image": image, "meta": meta}


def iter_tar(path: str | os.PathLike) -> Iterator[dict]:
    """Group the members of one tar into raw samples (``{"__key__", ext: bytes}``), in order."""
    current: dict | None = None
    with tarfile.open(path, "r") as tar:
        for ti in tar:
            if not ti.isfile():
                continue
            base = os.path.basename(ti.name)
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            f = tar.extractfile(ti)
            current[ext.lower()] = f.read() if f else b""
    if current is not None:
        yield current


def iter_samples(shards: Iterable[str | os.PathLike], stats: DecodeStats | None = None) -> Iterator[dict]:
    """Decoded samples of the given shards, corrupt ones skipped and counted in ``stats``."""
    stats = stats if stats is not None else DecodeStats()
    for shard in shards:
        for raw in iter_tar(shard):
            s = decode_sample(raw, stats)
            if s is not None:
                yield s
