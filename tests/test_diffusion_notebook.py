"""notebooks/02_generate.ipynb runs headless (nbclient) on the shipped model, with 2 sampling steps."""
from conftest import run_notebook


def test_generation_notebook_executes(monkeypatch):
    monkeypatch.delenv("GEN_NB_MODEL", raising=False)  # the shipped models/altdiffusion-emoji
    monkeypatch.setenv("GEN_NB_STEPS", "2")
    outputs, text = run_notebook("02_generate.ipynb")
    for lang in ("en", "zh", "es", "fr", "ru", "ar", "ja", "ko", "it"):
        assert f"[{lang}]" in text
    assert "AltCLIPTextModel" in text and "DPMSolverMultistepScheduler" in text and "DPM-Solver++ 2 steps" in text
    assert "81 images" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
