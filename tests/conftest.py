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


def run_notebook(name: str) -> tuple[list[dict], str]:
    """Execute ``notebooks/<name>`` headless (nbclient, cwd notebooks/); returns its code-cell outputs and
    their printed text, after checking that no cell raised."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}" if errors else ""
    return outputs, "".join(o.get("text", "") for o in outputs)
