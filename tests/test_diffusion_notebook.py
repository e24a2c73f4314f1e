"""notebooks/02_generate.ipynb runs headless (nbclient), here on a tiny random pipeline and 2 steps."""
from conftest import run_notebook
from test_diffusion_pipeline import tiny_pipeline


def test_generation_notebook_executes(tmp_path, monkeypatch):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("GEN_NB_MODEL", str(tmp_path / "pipe"))
    monkeypatch.setenv("GEN_NB_STEPS", "2")
    outputs, text = run_notebook("02_generate.ipynb")
    for lang in ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"):
        assert f"[{lang}]" in text
    assert "AltCLIPTextModel" in text and "DPM-Solver++" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
