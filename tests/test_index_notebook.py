"""notebooks/01_search.ipynb runs headless (nbclient) on the small emoji set, into a temp folder."""
import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_search_notebook_executes(emoji_small, tmp_path, monkeypatch):
    monkeypatch.setenv("INDEX_NB_DATA", str(emoji_small))
    monkeypatch.setenv("INDEX_NB_WORK", str(tmp_path))
    nb = nbformat.read(REPO / "notebooks" / "01_search.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    for lang in ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"):
        assert f"[{lang}]" in text
    assert "wall time of the whole command" in text and "text encoder" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert (tmp_path / "emoji" / "index.json").is_file() and (tmp_path / "queries.png").is_file()
