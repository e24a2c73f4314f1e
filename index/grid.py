"""An image grid of search hits: one row per query (its text, then the hit images with captions).

PIL's default font is Latin-only, so labels are drawn with a TrueType font that covers every character
of the label, picked per label from :data:`FONT_CANDIDATES` (checked with fontTools' cmap): DejaVu Sans
for Latin, Cyrillic and Arabic, WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``) or Noto CJK for
Chinese, Japanese and Korean, Lohit Devanagari for Hindi and Garuda for Thai. Arabic needs shaping and right-to-left ordering: PIL does it with its
raqm layout engine when available. A label no installed font covers is replaced by ``query N`` (and the
missing package named once on stderr). Hit images are read back from their source: ``shard.tar#key``
or an image file.
"""
from __future__ import annotations

import functools
import io
import os
import sys
import tarfile
from pathlib import Path

FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/lohit-devanagari/Lohit-Devanagari.ttf",
    "/usr/share/fonts/truetype/tlwg/Garuda.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
]
CJK_HINT = "install a CJK font for the grid labels: apt-get install fonts-wqy-microhei"


@functools.lru_cache(maxsize=None)
def _cmap(path: str) -> frozenset:
    from fontTools.ttLib import TTCollection, TTFont

    try:
        font = TTCollection(path).fonts[0] if path.endswith(".ttc") else TTFont(path, lazy=True)
        return frozenset(font.getBestCmap() or {})
    except Exception:  # an unreadable font file is simply not a candidate
        return frozenset()


def font_for(text: str, candidates=None) -> str | None:
    """The first installed font that has a glyph for every visible character of ``text``."""
    need = {ord(c) for c in text if not c.isspace() and ord(c) >= 0x20 and not 0xFE00 <= ord(c) <= 0xFE0F
            and ord(c) not in (0x200D,)}
    for path in candidates or FONT_CANDIDATES:
        if os.path.exists(path) and need <= _cmap(path):
            return path
    return None


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int):
    from PIL import ImageFont, features

    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=engine)


_warned: set = set()


def draw_label(draw, xy, text: str, size: int = 14, fill="black", fallback: str = "?", max_width: int | None = None):
    """Draw ``text`` with a covering font (or ``fallback`` with the default font); returns what was drawn."""
    path = font_for(text)
    if path is None:
        if CJK_HINT not in _warned:
            _warned.add(CJK_HINT)
            print(f"note: no installed font covers {text[:20]!r}; {CJK_HINT}", file=sys.stderr)
        text, path = fallback, font_for(fallback)
    font = _font(path, size) if path else None
    if max_width and font is not None:
        while len(text) > 1 and draw.textlength(text, font=font) > max_width:
            text = text[:-2] + "…"
    draw.text(xy, text, fill=fill, font=font)
    return text


def load_source_images(sources: list[str]) -> dict:
    """``{source: PIL image}`` for ``shard.tar#key`` and file sources (unreadable ones left out)."""
    from PIL import Image

    out, by_tar = {}, {}
    for s in set(sources):
        if s and "#" in s and s.split("#", 1)[0].endswith(".tar"):
            tar, key = s.split("#", 1)
            by_tar.setdefault(tar, {})[key] = s
        elif s:
            try:
                with Image.open(s) as im:
                    im.load()
                    out[s] = im.copy()
            except (OSError, ValueError, SyntaxError):
                pass
    for tar, keys in by_tar.items():
        try:
            with tarfile.open(tar) as tf:
                for m in tf:
                    base = os.path.basename(m.name)
                    key, _, ext = base.partition(".")
                    if key in keys and ext.lower() in ("png", "jpg", "jpeg", "webp") and keys[key] not in out:
                        im = Image.open(io.BytesIO(tf.extractfile(m).read()))
                        im.load()
                        out[keys[key]] = im
        except (OSError, tarfile.TarError):
            pass
    return out


def _flatten(image, cell: int):
    from PIL import Image

    image = image.convert("RGBA")
    bg = Image.new("RGBA", image.size, (255, 255, 255, 255))
    bg.alpha_composite(image)
    return bg.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC)


def save_grid(queries: list[str], results: list[list], out: str | os.PathLike, lang: str | None = None,
              cell: int = 96, label_width: int = 220):
    """Write a PNG grid: per query its text, then each hit's image with its rank, score and caption."""
    from PIL import Image, ImageDraw

    k = max((len(r) for r in results), default=0)
    images = load_source_images([h.source for r in results for h in r])
    caption_h = 34
    row_h = cell + caption_h
    grid = Image.new("RGB", (label_width + max(1, k) * (cell + 8), max(1, len(queries)) * row_h + 6), "white")
    draw = ImageDraw.Draw(grid)
    for r, (q, hits) in enumerate(zip(queries, results)):
        y = r * row_h + 4
        draw_label(draw, (6, y + cell // 2 - 8), q, size=16, fallback=f"query {r + 1}", max_width=label_width - 12)
        for c, h in enumerate(hits):
            x = label_width + c * (cell + 8)
            im = images.get(h.source)
            if im is not None:
                grid.paste(_flatten(im, cell), (x, y))
            else:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="gray")
            text = h.label(lang)
            text = text.split(" ", 1)[1] if h.extra.get("emoji") and " " in text else text  # the image shows it
            draw_label(draw, (x, y + cell + 1), f"{h.rank}. {h.score:.2f}", size=11, fill="gray")
            draw_label(draw, (x, y + cell + 15), text, size=12, fallback=h.key, max_width=cell + 6)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    grid.save(tmp)
    os.replace(tmp, out)
    return out
