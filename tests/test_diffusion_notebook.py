"""notebooks/02_generate.ipynb runs headless (nbclient), here on a tiny random pipeline and 2 steps."""
import nbformat
from nbclient import NotebookClient

from conftest import REPO
from test_diffusion_pipeline import tiny_pipeline


def test_generation_notebook_executes(tmp_path, monkeypatch):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("GEN_NB_MODEL", str(tmp_path / "pipe"))
    monkeypatch.setenv("GEN_NB_STEPS", "2")
    nb = nbformat.read(REPO / "notebooks" / "02_generate.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    for lang in ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"):
        assert f"[{lang}]" in text
    assert "AltCLIPTextModel" in text and "DPM-Solver++" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
