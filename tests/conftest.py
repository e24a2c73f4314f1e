import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def emoji_small(tmp_path_factory) -> Path:
    """A small real emoji dataset (120 candidates, m9 languages) with its tokenizer, built once per session."""
    from brivl.cli import main

    out = tmp_path_factory.mktemp("emoji") / "data"
    rc = main(["data", "emoji", "--out", str(out), "--limit", "120", "--langs", "en", "zh", "es", "fr", "ru", "ar",
               "ja", "ko", "it", "--maxcount", "40", "--vocab-size", "2000", "--tokenizer-langs", "en", "zh", "es",
               "fr", "ru", "ar", "ja", "ko", "it", "--val-frac", "0.1", "--test-frac", "0.1"])
    assert rc == 0
    return out
