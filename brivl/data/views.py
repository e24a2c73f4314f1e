"""Views of a data folder: which shards, splits and drawing styles a view name reads.

A data folder holds shards per split and ``manifest.json`` (see ``emoji.py`` / ``importer.py``).
Views: ``closed`` (every split: the closed world), a split name (``train``, ``val``, ``test``),
or several joined by ``+`` (``train+val``); ``style:NAME`` keeps the renders of one drawing style of a
multi-style emoji build, alone (``style:openmoji``: every split) or with splits (``test+style:openmoji``,
``train+style:noto+style:twemoji``): the named splits, unioned, and the named styles, unioned, intersected.
Pure file reading: no torch, no Lightning (search and evaluation import it cheaply).
"""
from __future__ import annotations

import json
from pathlib import Path

from .emoji import sample_style
from .shards import DecodeStats, iter_samples, iter_tar


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build the data first (`python -m brivl data emoji --out {data_dir}` "
            f"or `python -m brivl data import SOURCE --out {data_dir}`)"
        )
    return json.loads(path.read_text())


STYLE_PREFIX = "style:"


def _view_parts(view: str) -> tuple[list[str], list[str]]:
    """``view`` -> (split parts, style names) as written."""
    parts = view.split("+")
    styles = [p[len(STYLE_PREFIX):] for p in parts if p.startswith(STYLE_PREFIX)]
    return [p for p in parts if not p.startswith(STYLE_PREFIX)], styles


def view_splits(manifest: dict, view: str) -> list[str]:
    """The splits a view reads (every split for ``closed``, ``all`` or a view of styles only)."""
    splits = list(manifest["splits"])
    names, _ = _view_parts(view)
    names = splits if names in ([], ["closed"], ["all"]) else names
    bad = [n for n in names if n not in splits]
    if bad:
        raise ValueError(f"unknown view {view!r}: this data has splits {splits} (or 'closed' for all of them), "
                         f"optionally with styles: {', '.join(STYLE_PREFIX + st for st in data_styles(manifest))}")
    return names


def data_styles(manifest: dict) -> list[str]:
    """The drawing styles of a data folder: those its manifest counts, else the one style of a Noto-only build."""
    return list(manifest.get("styles") or {}) or ["noto"]


def view_styles(manifest: dict, view: str) -> set[str] | None:
    """The styles a view keeps, or ``None`` for every style (an unknown style lists the known ones)."""
    _, styles = _view_parts(view)
    if not styles:
        return None
    known = data_styles(manifest)
    bad = [st for st in styles if st not in known]
    if bad:
        raise ValueError(f"unknown style {bad[0]!r} in view {view!r}: this data has the styles "
                         f"{', '.join(known)} (views: {', '.join(STYLE_PREFIX + st for st in known)})")
    return set(styles)


def view_shards(data_dir: str | Path, view: str) -> list[str]:
    manifest = load_manifest(data_dir)
    return [str(Path(data_dir) / s) for n in view_splits(manifest, view) for s in manifest["splits"][n]["shards"]]


def view_size(data_dir: str | Path, view: str) -> int:
    """How many samples a view holds (the manifest's counts; a view of styles counts the keys in its shards)."""
    manifest = load_manifest(data_dir)
    styles = view_styles(manifest, view)
    if styles is None:
        return sum(manifest["splits"][s]["count"] for s in view_splits(manifest, view))
    return sum(sample_style(raw["__key__"]) in styles for shard in view_shards(data_dir, view)
               for raw in iter_tar(shard))


def load_view(data_dir: str | Path, view: str) -> tuple[list[dict], DecodeStats]:
    """Every decoded sample of a view, in shard order (for evaluation and indexing)."""
    stats = DecodeStats()
    styles = view_styles(load_manifest(data_dir), view)
    samples = [s for s in iter_samples(view_shards(data_dir, view), stats)
               if styles is None or sample_style(s["key"]) in styles]
    return samples, stats
