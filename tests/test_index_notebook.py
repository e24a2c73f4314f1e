"""notebooks/01_search.ipynb runs headless (nbclient) on the small emoji set, into a temp folder."""
from conftest import run_notebook


def test_search_notebook_executes(emoji_small, tmp_path, monkeypatch):
    monkeypatch.setenv("INDEX_NB_DATA", str(emoji_small))
    monkeypatch.setenv("INDEX_NB_WORK", str(tmp_path))
    outputs, text = run_notebook("01_search.ipynb")
    for lang in ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"):
        assert f"[{lang}]" in text
    assert "wall time of the whole command" in text and "text encoder" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert (tmp_path / "emoji" / "index.json").is_file() and (tmp_path / "queries.png").is_file()
