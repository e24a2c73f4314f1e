#!/usr/bin/env bash
# Idempotent set-up: Debian packages for the embedded data and grid fonts, .venv/ with the project installed.
# Fast when nothing changed (a stamp holds the hash of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
[ -f /usr/share/unicode/cldr/common/annotations/en.xml ] || need+=(unicode-cldr-core)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)  # CJK labels in search grids
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)  # Latin, Cyrillic, Arabic labels
[ -f /usr/share/fonts/truetype/lohit-devanagari/Lohit-Devanagari.ttf ] || need+=(fonts-lohit-deva)  # Hindi labels
[ -f /usr/share/fonts/truetype/tlwg/Garuda.ttf ] || need+=(fonts-tlwg-garuda-ttf)  # Thai labels
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the search page's browser test (Playwright drives it)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Twemoji for `brivl data emoji --styles twemoji` (CC BY 4.0): the pinned npm package, its 64 px PNGs only
TW=data/sources/emoji-datasource-twitter-16.0.0
if [ ! -d "$TW/package/img/twitter/64" ] && command -v npm >/dev/null 2>&1; then
  echo "fetching emoji-datasource-twitter@16.0.0 (npm) into $TW"
  mkdir -p "$TW"
  (cd "$TW" && tgz=$(npm pack --silent emoji-datasource-twitter@16.0.0) \
    && tar xzf "$tgz" package/img/twitter/64 package/LICENSE package/package.json && rm -f "$tgz")
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing Python packages into .venv (torch==2.14.1, torchvision==0.29.1 from local wheels) ..."
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,milvus]"
  echo "$want" > "$stamp"
fi
