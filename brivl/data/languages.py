"""Which languages a data folder covers: the share of its concepts that have a CLDR name in each language.

A language is *covered* when at least ``MIN_COVERAGE`` of the concepts have a name in it (CLDR gives 116
languages names, but some only for a handful of emoji). ``--langs all`` everywhere (training, evaluation,
tokenizer) means the covered languages of the data folder.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

from .views import load_manifest, view_shards

MIN_COVERAGE = 0.8
ALL = "all"


@lru_cache(maxsize=8)
def _coverage(data_dir: str, view: str, manifest_mtime: float) -> tuple[int, tuple[tuple[str, int], ...]]:
    n, counts = 0, Counter()
    for shard in view_shards(data_dir, view):
        with tarfile.open(shard) as tar:
            for ti in tar:
                if not ti.name.endswith(".json"):
                    continue
                try:
                    meta = json.loads(tar.extractfile(ti).read())
                except (ValueError, UnicodeDecodeError):
                    continue  # a corrupt sample: the readers skip and count it too
                n += 1
                counts.update(lang for lang, name in (meta.get("names") or {}).items() if name)
    return n, tuple(sorted(counts.items()))


def language_coverage(data_dir: str | Path, view: str = "closed") -> dict[str, float]:
    """Language -> the share of the view's concepts with a name in it (reads only the JSON members)."""
    manifest = Path(data_dir) / "manifest.json"
    load_manifest(data_dir)  # a clear error when the folder has no data
    n, counts = _coverage(str(data_dir), view, manifest.stat().st_mtime)
    return {lang: c / n for lang, c in counts} if n else {}


def covered_languages(data_dir: str | Path, min_coverage: float = MIN_COVERAGE) -> list[str]:
    """The languages with a name for at least ``min_coverage`` of the concepts, sorted by code."""
    return sorted(lang for lang, c in language_coverage(data_dir).items() if c >= min_coverage)


def resolve_langs(langs: list[str] | tuple[str, ...] | None, data_dir: str | Path,
                  min_coverage: float = MIN_COVERAGE) -> list[str] | None:
    """Expand ``all`` to the covered languages; a code the data has no names in is an error listing them."""
    if not langs:
        return None
    covered = covered_languages(data_dir, min_coverage)
    out: list[str] = []
    for lang in langs:
        for code in (covered if lang == ALL else [lang]):
            if code not in out:
                out.append(code)
    have = language_coverage(data_dir)
    unknown = [lang for lang in out if lang not in have]
    if unknown:
        raise ValueError(f"no names in {', '.join(unknown)} in {data_dir}; covered languages (a name for >= "
                         f"{min_coverage:.0%} of the emoji, or 'all' for every one of them): {' '.join(covered)}")
    return out


def resolve_for_datamodule(langs: list[str] | None, datamodule) -> list[str] | None:
    """``resolve_langs`` against the data folder of a Lightning datamodule (``hparams.data_dir``), for the
    systems' ``eval_langs``: only a list with ``all`` in it is expanded, any other list is kept as given."""
    if not langs or ALL not in langs:
        return langs
    data_dir = getattr(getattr(datamodule, "hparams", None), "data_dir", None) or "data/emoji"
    return resolve_langs(langs, data_dir)
