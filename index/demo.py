"""The README's main job (``bash scripts/demo.sh`` = ``python -m index demo``): build the emoji data if missing,
load the shipped model, print a per-language retrieval table, build the emoji FAISS index (if missing) and answer
the example queries (:data:`brivl.demo.DEMO_QUERIES`) from it, and save a grid of the hits. It spans the packages,
so it lives above them: ``index`` already builds on ``brivl``."""
from __future__ import annotations

from pathlib import Path


def run_demo(model_dir: str, data: str, queries: list[str] | None = None, k: int = 3,
             grid: str = "runs/demo/queries.png", index_dir: str | None = None) -> None:
    """Tables on both views, then the emoji index (``data/index/<model name>``) and example searches."""
    from brivl.cli import ensure_data, run_eval
    from brivl.data.views import load_view
    from brivl.evaluate import format_table
    from brivl.factory import create_model

    ensure_data(data)
    model = create_model(model_dir)
    closed = load_view(data, "closed")  # decoded once for the table
    for view in ("closed", "test"):
        res = run_eval(model, data, view, None, name=model_dir, loaded=closed if view == "closed" else None)
        print(format_table(res, f"\n{model_dir} text->image / image->text retrieval, view={view} "
                                f"({res['n_images']} emoji)"))
    index_dir = index_dir or str(Path(data).parent / "index" / Path(model_dir).name)
    search_index(model, model_dir, data, queries, k, index_dir, grid)


def search_index(model, model_dir: str, data: str, queries: list[str] | None, k: int, index_dir: str, grid: str) -> None:
    """Build the FAISS index of every emoji (reused when current), then answer the example queries from it."""
    import time

    from brivl.demo import DEMO_QUERIES

    from .api import load_index, search_text
    from .build import ensure_index
    from .grid import save_grid

    info, built = ensure_index(model_dir, data, index_dir, progress=False, loaded=model)
    print(f"\nindex {index_dir}: {info['count']} emoji, {info['factory']} "
          f"({'built' if built else 'reused'}; text encoder: {'ONNX' if info.get('text_encoder') else 'torch'})")
    qs = [("", q) for q in queries] if queries else DEMO_QUERIES
    idx = load_index(index_dir)
    try:
        t = time.perf_counter()
        results = search_text(idx, [q for _, q in qs], k=k)
        ms = 1e3 * (time.perf_counter() - t)
        print(f"example queries: top {k} of {info['count']} ({len(qs)} queries in {ms:.0f} ms, text encoder start "
              f"included)")
        for (lang, q), hits in zip(qs, results):
            shown = "   ".join(f"{h.label(lang or None)} ({h.score:.2f})" for h in hits)
            print(f"  [{lang or '?':>2}] {q:<12} -> {shown}")
        labels = [f"[{lang}] {q}" if lang else q for lang, q in qs]
        print(f"grid of hits: {save_grid(labels, results, grid, cell=64, label_width=150)}")
    finally:
        idx.close()
