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


@pytest.fixture(scope="session")
def emoji3_full(tmp_path_factory) -> Path:
    """The full three-style build with the family split (what models/brivl-emoji3 was trained and evaluated on)."""
    from brivl.cli import main

    out = tmp_path_factory.mktemp("emoji3_full") / "data"
    assert main(["data", "emoji", "--out", str(out), "--styles", "noto", "twemoji", "openmoji", "--split-by",
                 "family", "--vocab-size", "0"]) == 0
    return out


@pytest.fixture(scope="session")
def emoji_full(tmp_path_factory) -> Path:
    """The full emoji build (every emoji, every language; no tokenizer: the shipped models bring theirs)."""
    from brivl.cli import main

    out = tmp_path_factory.mktemp("emoji_full") / "data"
    assert main(["data", "emoji", "--out", str(out), "--vocab-size", "0"]) == 0
    return out


# ------------------------------------------------------------------- a tiny index (random brivl-nano towers)


def _nano_model(tok, out, seed, name):
    import torch

    from brivl.factory import create_model

    torch.manual_seed(seed)
    m = create_model("brivl-nano", tokenizer=str(tok)).eval()
    m.info["name"] = name
    return m.save_pretrained(out)


@pytest.fixture(scope="session")
def models(emoji_small, tmp_path_factory):
    """Two random brivl-nano dual towers (seeds 0 and 1) on the small set's tokenizer."""
    root = tmp_path_factory.mktemp("models")
    return (_nano_model(emoji_small / "tokenizer", root / "nano", 0, "nano"),
            _nano_model(emoji_small / "tokenizer", root / "other", 1, "other"))


@pytest.fixture(scope="session")
def emb(emoji_small, models, tmp_path_factory):
    """The small emoji set embedded by the first random tower (``index embed``)."""
    from index.cli import main

    out = tmp_path_factory.mktemp("emb") / "closed"
    assert main(["embed", "--model", str(models[0]), "--data", str(emoji_small), "--out", str(out),
                 "--batch-size", "32", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def built(emb, tmp_path_factory):
    """A flat index of :func:`emb` (``index build``, ONNX text encoder)."""
    from index.cli import main

    out = tmp_path_factory.mktemp("idx") / "flat"
    assert main(["build", "--emb", str(emb), "--out", str(out), "--no-progress"]) == 0
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
