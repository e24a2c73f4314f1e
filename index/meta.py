"""Metadata of indexed items in SQLite (``meta.sqlite``), keyed by the int64 ids FAISS returns.

Tables::

    items(id INTEGER PRIMARY KEY, key TEXT UNIQUE, caption, language, captions JSON, source, extra JSON)
    deleted(id INTEGER PRIMARY KEY)   -- tombstones: ids removed from an index type that cannot
                                      -- remove vectors in place (HNSW, on-disk IVF); filtered at search

A hit is looked up by its id, never by its row position, so adding and removing items never shifts
another item's metadata.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

from .common import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    caption TEXT,
    language TEXT,
    captions TEXT,
    source TEXT,
    extra TEXT
);
CREATE TABLE IF NOT EXISTS deleted (id INTEGER PRIMARY KEY);
"""
COLUMNS = ("id", "key", "caption", "language", "captions", "source", "extra")


def connect(path: str | os.PathLike, readonly: bool = False) -> sqlite3.Connection:
    """Open (read-only: never create) the metadata database."""
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise UserError(f"metadata database {path} is missing: the index folder is incomplete")
        # readers may be handed between threads (the HTTP service); each is used by one thread at a time
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path)
        conn.executescript(SCHEMA)
    return conn


def row_of(item: dict) -> tuple:
    """An item dict (as written by ``index embed``) -> a row tuple in ``COLUMNS`` order."""
    return (int(item["id"]), item["key"], item.get("caption"), item.get("language"),
            json.dumps(item.get("captions") or {}, ensure_ascii=False, sort_keys=True),
            item.get("source"), json.dumps(item.get("extra") or {}, ensure_ascii=False, sort_keys=True))


def insert(conn: sqlite3.Connection, items: Iterable[dict]) -> int:
    """Insert items; a repeated id or key raises :class:`UserError` (and nothing is committed)."""
    rows = [row_of(it) for it in items]
    try:
        with conn:
            conn.executemany(f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             rows)
            conn.executemany("DELETE FROM deleted WHERE id = ?", [(r[0],) for r in rows])
    except sqlite3.IntegrityError as e:
        raise UserError(f"metadata already has one of these ids or keys ({e})") from e
    return len(rows)


def _chunks(seq: Sequence, n: int = 500):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def fetch(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, dict]:
    """``{id: item}`` for the ids present (absent ids are simply missing from the result)."""
    ids = sorted({int(i) for i in ids})
    out: dict[int, dict] = {}
    for chunk in _chunks(ids):
        q = f"SELECT {', '.join(COLUMNS)} FROM items WHERE id IN ({', '.join('?' * len(chunk))})"
        for row in conn.execute(q, chunk):
            item = dict(zip(COLUMNS, row))
            item["captions"] = json.loads(item["captions"] or "{}")
            item["extra"] = json.loads(item["extra"] or "{}")
            out[item["id"]] = item
    return out


def ids_of_keys(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, int]:
    keys = list(dict.fromkeys(keys))
    out: dict[str, int] = {}
    for chunk in _chunks(keys):
        q = f"SELECT key, id FROM items WHERE key IN ({', '.join('?' * len(chunk))})"
        out.update(dict(conn.execute(q, chunk).fetchall()))
    return out


def existing_ids(conn: sqlite3.Connection, ids: Iterable[int]) -> set[int]:
    return set(fetch_ids(conn, ids))


def fetch_ids(conn: sqlite3.Connection, ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in ids})
    found: list[int] = []
    for chunk in _chunks(ids):
        found += [r[0] for r in conn.execute(f"SELECT id FROM items WHERE id IN ({', '.join('?' * len(chunk))})",
                                             chunk)]
    return found


def delete(conn: sqlite3.Connection, ids: Iterable[int], tombstone: bool) -> int:
    """Delete items; with ``tombstone`` also record their ids in ``deleted`` (filtered at search)."""
    ids = [(int(i),) for i in ids]
    with conn:
        n = conn.executemany("DELETE FROM items WHERE id = ?", ids).rowcount
        if tombstone:
            conn.executemany("INSERT OR IGNORE INTO deleted (id) VALUES (?)", ids)
    return n


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def all_ids(conn: sqlite3.Connection):
    import numpy as np

    return np.array([r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)


def deleted_ids(conn: sqlite3.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM deleted")}
