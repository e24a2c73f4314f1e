"""Import users' own image–text pairs into the shard layout the rest of the repo reads.

Sources:

* a folder: ``a.jpg`` + ``a.txt`` (one caption per line), optional ``a.json`` with
  ``{"captions": {lang: [...]}}`` or ``{"caption": ..., "language": ...}`` (img2dataset's output folders fit);
* a CSV (or TSV) with a header: ``image`` (alias ``filepath``), ``caption`` (alias ``title``), optional
  ``language``; image paths are relative to the CSV's folder or absolute;
* a JSONL file of ``{"image": path, "caption": str, "language": optional str}``.

Rows of the same image merge into one sample with its captions grouped by language, so Flickr30k,
COCO-CN or XTD-style sets plug in without code changes. Keys are the first 16 hex chars of the sha1 of
the image's path relative to the source folder and samples are written sorted by key, so a re-run gives
byte-identical shards. Missing or undecodable images and captionless ones are dropped, logged and counted
in ``manifest.json`` — never a crash.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from .shards import ShardWriter, atomic_write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # stored as-is; any other format is re-encoded as PNG
IMAGE_KEYS, CAPTION_KEYS = ("image", "filepath"), ("caption", "title")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
SOURCE_HELP = ("pass a folder of images with same-stem .txt/.json captions, a .csv/.tsv with 'image' and 'caption' "
               "columns (optional 'language'), or a .jsonl of {\"image\", \"caption\", \"language\"} objects")

Captions = dict[str, list[str]]


def _norm(path: Path) -> Path:
    """Absolute, normalised path (``..`` and ``.`` folded) without following symlinks."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _add(caps: Captions, lang, caption, default_lang: str) -> None:
    """Append a non-empty caption under its language (``default_lang`` when none is named)."""
    text = "" if caption is None else str(caption).strip()
    if text:
        lang = "" if lang is None else str(lang).strip()
        caps.setdefault(lang or default_lang, []).append(text)


def _first(row: dict, keys) -> str | None:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


# --------------------------------------------------------------------------- sources


def _read_table(source: Path, dropped: Counter) -> list[dict]:
    sep = TABLE_SUFFIXES[source.suffix.lower()]
    if sep is not None:
        with open(source, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=sep)
            header = [str(h).strip().lower() for h in (reader.fieldnames or [])]
            rows = [{str(k).strip().lower(): v for k, v in r.items() if k is not None} for r in reader]
        columns = set(header)
    else:
        rows, n_lines = [], 0
        for i, line in enumerate(source.read_text(encoding="utf-8-sig", errors="replace").splitlines()):
            if not line.strip():
                continue
            n_lines += 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                dropped["malformed row"] += 1
                log.warning("dropping %s line %d: not a JSON object (%s)", source, i + 1, e)
                continue
            rows.append({str(k).strip().lower(): v for k, v in row.items()})
        if n_lines and not rows:
            raise ValueError(f"{source} has no JSON object lines: {SOURCE_HELP}")
        columns = set().union(*rows) if rows else set()
    if rows or sep is not None:
        missing = [f"'{a}' (or '{b}')" for a, b in (IMAGE_KEYS, CAPTION_KEYS) if not {a, b} & columns]
        if missing:
            raise ValueError(f"{source} needs {' and '.join(missing)} {'columns' if sep else 'fields'}; "
                             f"found {sorted(columns)}")
    return rows


def _pairs_from_table(source: Path, default_lang: str, dropped: Counter) -> dict[Path, Captions]:
    pairs: dict[Path, Captions] = {}
    for row in _read_table(source, dropped):
        img = _first(row, IMAGE_KEYS)
        if img is None:
            dropped["no image path"] += 1
            log.warning("dropping a row of %s without an image path: %s", source, row)
            continue
        path = Path(str(img).strip())
        path = _norm(path if path.is_absolute() else source.parent / path)
        caps = pairs.setdefault(path, {})
        _add(caps, row.get("language"), _first(row, CAPTION_KEYS), default_lang)
    return pairs


def _captions_from_json(meta_path: Path, default_lang: str) -> Captions:
    caps: Captions = {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s (%s)", meta_path, e)
        return caps
    if not isinstance(meta, dict):
        return caps
    if isinstance(meta.get("captions"), dict):
        for lang, vals in meta["captions"].items():
            for v in [vals] if isinstance(vals, str) else vals if isinstance(vals, list) else []:
                _add(caps, lang, v, default_lang)
    elif isinstance(meta.get("caption"), (str, int, float)):
        _add(caps, meta.get("language"), meta["caption"], default_lang)
    return caps


def _pairs_from_folder(source: Path, default_lang: str) -> dict[Path, Captions]:
    pairs: dict[Path, Captions] = {}
    images = (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
              and not any(part.startswith(".") for part in p.relative_to(source).parts))
    for path in sorted(images):
        caps: Captions = {}
        meta_path, txt_path = path.with_suffix(".json"), path.with_suffix(".txt")
        if meta_path.is_file():
            caps = _captions_from_json(meta_path, default_lang)
        if not caps and txt_path.is_file():
            try:
                for line in txt_path.read_text(encoding="utf-8", errors="replace").splitlines():
                    _add(caps, None, line, default_lang)
            except OSError as e:
                log.warning("ignoring unreadable %s (%s)", txt_path, e)
        pairs[_norm(path)] = caps
    return pairs


# --------------------------------------------------------------------------- images


def _load_image(path: Path, image_size: int | None) -> tuple[bytes, str]:
    """``(bytes, ext)`` of a fully decoded image; raises on a missing or undecodable file."""
    from PIL import Image, ImageOps

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        ext = FORMAT_EXT.get(im.format or "")
        if image_size is None and ext is not None:
            return data, ext
        if image_size is not None:
            im = ImageOps.exif_transpose(im)
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha else "RGB")
        if image_size is not None:
            scale = image_size / min(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue(), "png"


# --------------------------------------------------------------------------- import


def import_pairs(source: str | os.PathLike, out: str | os.PathLike, split: str = "train",
                 default_lang: str = "und", image_size: int | None = None, maxcount: int = 1000,
                 progress: bool = True) -> dict:
    """Convert ``source`` (folder, CSV/TSV or JSONL) to shards + ``manifest.json`` under ``out``.

    Returns the manifest. Raises ``FileNotFoundError`` for a missing source and ``ValueError`` for an
    unsupported file type, a table without image/caption columns or bad arguments.
    """
    from PIL import Image

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: {SOURCE_HELP}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split name {split!r} must be letters, digits, '_' or '-' (e.g. train, val, test)")
    if not default_lang.strip():
        raise ValueError("default language must not be empty (use 'und' for unknown)")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image size must be > 0, got {image_size}")
    dropped: Counter = Counter()
    if source.is_dir():
        root = _norm(source)
        pairs = _pairs_from_folder(source, default_lang)
    elif source.suffix.lower() in TABLE_SUFFIXES:
        root = _norm(source.parent)
        pairs = _pairs_from_table(source, default_lang, dropped)
    else:
        raise ValueError(f"unsupported source {source} (type {source.suffix or 'without a suffix'!r}): {SOURCE_HELP}")

    def rel_of(p: Path) -> str:
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.as_posix()

    n_rows_dropped = sum(dropped.values())  # table rows dropped before grouping by image
    items = sorted((hashlib.sha1(rel_of(p).encode("utf-8")).hexdigest()[:16], rel_of(p), p) for p in pairs)
    langs: set[str] = set()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, split, maxcount)
    for key, rel, path in tqdm(items, desc=f"import {_norm(source).name}", unit="img", disable=not progress):
        caps = {lang: vals for lang, vals in sorted(pairs[path].items()) if vals}
        reason = None
        if not caps:
            reason = "no caption"
        elif not path.is_file():
            reason = "missing image"
        else:
            try:
                data, ext = _load_image(path, image_size)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                reason = "undecodable image"
                log.warning("dropping %s: cannot decode the image (%s: %s)", path, type(e).__name__, e)
        if reason is not None:
            dropped[reason] += 1
            if reason != "undecodable image":
                log.warning("dropping %s: %s", path, reason)
            continue
        langs.update(caps)
        first = caps[default_lang][0] if default_lang in caps else next(iter(caps.values()))[0]
        meta = {"id": key, "split": split, "captions": caps, "source": rel}
        writer.write({"__key__": key, ext: data, "txt": first, "json": meta})
    shards = writer.close()
    if dropped:
        log.warning("import %s: dropped %s", source, dict(sorted(dropped.items())))
    manifest = {
        "dataset": source.stem or _norm(source).name,
        "image_size": image_size,
        "languages": sorted(langs),
        "splits": {split: {"shards": shards, "count": writer.count}},
        "counts": {"candidates": len(pairs) + n_rows_dropped, "rendered": writer.count,
                   "dropped": dict(sorted(dropped.items()))},
        "sources": {"path": str(source), "type": "folder" if source.is_dir() else source.suffix.lower().lstrip("."),
                    "default_lang": default_lang},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------- CLI


def add_import_parser(subparsers) -> None:
    """Register ``data import SOURCE --out DIR [--split] [--lang] [--size] [--maxcount]``."""
    p = subparsers.add_parser("import", help="your own image-text pairs (folder, CSV or JSONL) -> shards",
                              description=__doc__.split("\n\n")[0] + " " + SOURCE_HELP[0].upper() + SOURCE_HELP[1:] + ".")
    p.add_argument("source", metavar="SOURCE", help="folder of images + .txt/.json captions, or a .csv/.tsv/.jsonl")
    p.add_argument("--out", required=True, metavar="DIR", help="output data folder (shards + manifest.json)")
    p.add_argument("--split", default="train", help="split name of the imported samples (default train)")
    p.add_argument("--lang", default="und", help="language of captions that do not name one (default und)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="resize the shorter side to N px and store PNG (default: keep the image bytes)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    p.set_defaults(func=_cmd_import)


def _cmd_import(a) -> None:
    m = import_pairs(a.source, a.out, split=a.split, default_lang=a.lang, image_size=a.size, maxcount=a.maxcount)
    print(f"wrote {m['counts']['rendered']} samples to {a.out} (split {a.split}, "
          f"{len(m['splits'][a.split]['shards'])} shards, languages {m['languages']}); "
          f"dropped {m['counts']['dropped']}")
