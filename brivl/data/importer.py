"""Import users' own image–text pairs into the shard layout the rest of the repo reads.

Sources: a folder (``a.jpg`` + ``a.txt`` one caption per line, optional ``a.json``; img2dataset's
output folders fit), a CSV (``image``/``filepath``, ``caption``/``title``, optional ``language``) or a
JSONL (``{"image", "caption", "language"}``). Rows of the same image merge into one sample with its
captions grouped by language, so Flickr30k, COCO-CN or XTD-style sets plug in without code changes.
Unreadable images and captionless rows are dropped and counted, never a crash.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from .shards import ShardWriter, atomic_write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
IMAGE_KEYS, CAPTION_KEYS = ("image", "filepath", "path"), ("caption", "title", "text")


def _first(row: dict, keys) -> str | None:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


def _rows_from_table(source: Path, default_lang: str) -> dict[Path, dict[str, list[str]]]:
    if source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for i, line in enumerate(source.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source}:{i + 1} is not valid JSON ({e.msg})") from e
    if rows and _first(rows[0], IMAGE_KEYS) is None and not any(k in rows[0] for k in IMAGE_KEYS):
        raise ValueError(f"{source} needs an 'image' (or 'filepath') column and a 'caption' (or 'title') column; "
                         f"found {sorted(rows[0])}")
    pairs: dict[Path, dict[str, list[str]]] = {}
    for row in rows:
        img = _first(row, IMAGE_KEYS)
        if img is None:
            continue
        path = Path(img) if Path(img).is_absolute() else source.parent / img
        caps = pairs.setdefault(path, {})
        cap = (_first(row, CAPTION_KEYS) or "").strip()
        if cap:
            caps.setdefault(row.get("language") or default_lang, []).append(cap)
    return pairs


def _rows_from_folder(source: Path, default_lang: str) -> dict[Path, dict[str, list[str]]]:
    pairs: dict[Path, dict[str, list[str]]] = {}
    for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caps: dict[str, list[str]] = {}
        meta_path, txt_path = path.with_suffix(".json"), path.with_suffix(".txt")
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                meta = {}
                log.warning("unreadable %s: ignored", meta_path)
            if isinstance(meta.get("captions"), dict):
                caps = {k: [c for c in v if str(c).strip()] for k, v in meta["captions"].items()}
            elif str(meta.get("caption") or "").strip():
                caps = {meta.get("language") or default_lang: [meta["caption"].strip()]}
        if not caps and txt_path.exists():
            lines = [s.strip() for s in txt_path.read_text(encoding="utf-8", errors="replace").splitlines()]
            caps = {default_lang: [s for s in lines if s]}
        pairs[path] = {k: v for k, v in caps.items() if v}
    return pairs


def import_pairs(source: str | Path, out: str | Path, split: str = "train", default_lang: str = "und",
                 image_size: int | None = None, maxcount: int = 1000, progress: bool = True) -> dict:
    """Convert ``source`` to shards + ``manifest.json`` under ``out``; returns the manifest."""
    from PIL import Image, UnidentifiedImageError

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: pass a folder of images + .txt captions, a .csv or a .jsonl")
    if source.is_dir():
        pairs = _rows_from_folder(source, default_lang)
        root = source
    elif source.suffix.lower() in (".csv", ".jsonl"):
        pairs = _rows_from_table(source, default_lang)
        root = source.parent
    else:
        raise ValueError(f"unsupported source {source}: pass a folder, a .csv or a .jsonl file")

    def key_of(p: Path) -> str:
        try:
            rel = p.resolve().relative_to(root.resolve())
        except ValueError:
            rel = p.resolve()
        return hashlib.sha1(rel.as_posix().encode()).hexdigest()[:16]

    dropped: Counter = Counter()
    langs: set[str] = set()
    out = Path(out)
    writer = ShardWriter(out, split, maxcount)
    for key, path in tqdm(sorted((key_of(p), p) for p in pairs), desc=f"import {source.name}", disable=not progress):
        caps = pairs[path]
        if not caps:
            dropped["no caption"] += 1
            log.warning("dropping %s: no caption", path)
            continue
        if not path.exists():
            dropped["missing image"] += 1
            log.warning("dropping %s: missing image", path)
            continue
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if image_size:
                    im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
                    scale = image_size / min(im.size)
                    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                   Image.Resampling.BICUBIC)
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    data, ext = buf.getvalue(), "png"
                else:
                    ext = IMAGE_SUFFIXES.get(path.suffix.lower(), "png")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            dropped["undecodable image"] += 1
            log.warning("dropping %s: cannot decode the image", path)
            continue
        langs.update(caps)
        first = next(iter(caps.values()))[0]
        meta = {"id": key, "split": split, "captions": caps, "source": str(path)}
        writer.write({"__key__": key, ext: data, "txt": first, "json": meta})
    shards = writer.close()
    manifest = {
        "dataset": source.stem,
        "image_size": image_size,
        "languages": sorted(langs),
        "splits": {split: {"shards": shards, "count": writer.count}},
        "counts": {"candidates": len(pairs), "rendered": writer.count, "dropped": dict(sorted(dropped.items()))},
        "sources": {"path": str(source)},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def add_import_parser(subparsers) -> None:
    p = subparsers.add_parser("import", help="your own image-text pairs (folder, CSV or JSONL) -> shards")
    p.add_argument("source", metavar="SOURCE", help="folder of images + .txt/.json captions, or a .csv / .jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--lang", default="und", help="language of captions that do not name one")
    p.add_argument("--size", type=int, default=None, help="resize the shorter side to N px (PNG)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.set_defaults(func=_cmd_import)


def _cmd_import(a) -> None:
    m = import_pairs(a.source, a.out, a.split, a.lang, a.size, a.maxcount)
    print(f"wrote {m['counts']['rendered']} samples to {a.out} (split {a.split}, languages {m['languages']}); "
          f"dropped {m['counts']['dropped']}")
