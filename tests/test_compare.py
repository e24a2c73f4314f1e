"""brivl.compare: per-query hits agree with the retrieval metric, and the paired concept bootstrap agrees with a
resampling written out concept by concept."""
import json
import random

import pytest
import torch

from brivl.compare import mean_recall, paired_bootstrap, query_hits


def test_query_hits_average_to_the_evaluated_recall(emoji_small, models):
    from brivl.data.transforms import to_batch
    from brivl.data.views import load_view
    from brivl.evaluate import evaluate_model, mean_over_languages
    from brivl.factory import create_model

    model = create_model(str(models[0]))
    samples, _ = load_view(emoji_small, "closed")
    metas = [s["meta"] for s in samples]
    images = to_batch(samples, model.image_size, *model.image_mean_std)
    langs = ["en", "zh", "ja"]
    res = evaluate_model(model, images, metas, langs, zeroshot=False)
    for k in (1, 5):
        hits = query_hits(model, images, metas, langs, k)
        assert set(hits) == set(langs)
        n_concepts = len({m["id"] for m in metas})
        got = float(mean_recall(hits, torch.ones(1, n_concepts)))
        assert got == pytest.approx(mean_over_languages(res, "t2i", f"R@{k}"), abs=1e-6)


def _resampled_recall(hits, drawn):
    """R@k over languages for one resample ``drawn`` (a list of concept indices), written out query by query."""
    per_lang = []
    for h, owner in hits.values():
        picked = [float(h[q]) for c in drawn for q in range(len(owner)) if int(owner[q]) == c]
        per_lang.append(sum(picked) / len(picked) if picked else 0.0)
    return sum(per_lang) / len(per_lang)


def test_paired_bootstrap_against_a_written_out_resampling():
    rng = random.Random(0)
    n_concepts = 12
    owner = torch.tensor([c for c in range(n_concepts) for _ in range(2)])  # two queries per concept
    runs = {name: {lang: (torch.tensor([float(rng.random() < p) for _ in owner]), owner) for lang in ("en", "ja")}
            for name, p in (("a", 0.3), ("b", 0.7))}
    res = paired_bootstrap(runs, n_concepts, n_boot=200, seed=3)
    g = torch.Generator().manual_seed(3)  # the same draws, resample by resample
    draws = torch.randint(0, n_concepts, (200, n_concepts), generator=g).tolist()
    a = sorted(_resampled_recall(runs["a"], d) for d in draws)
    diff = sorted(_resampled_recall(runs["b"], d) - _resampled_recall(runs["a"], d) for d in draws)
    lo, hi = round(0.025 * 199), round(0.975 * 199)  # nearest rank (brivl.stats.percentile_ci)
    assert res["runs"]["a"]["ci95"] == pytest.approx([a[lo], a[hi]], abs=1e-4)
    assert res["runs"]["b"]["minus_first_ci95"] == pytest.approx([diff[lo], diff[hi]], abs=1e-4)
    assert res["runs"]["a"]["mean"] == pytest.approx(_resampled_recall(runs["a"], range(n_concepts)), abs=1e-4)
    assert "minus_first" not in res["runs"]["a"]
    # the same model twice: the paired difference is exactly 0 in every resample
    same = paired_bootstrap({"a": runs["a"], "a again": runs["a"]}, n_concepts, n_boot=50)
    assert same["runs"]["a again"]["minus_first_ci95"] == [0.0, 0.0]


def test_compare_cli_prints_the_models_and_their_difference(emoji_small, models, capsys):
    from brivl.cli import main

    assert main(["compare", "--models", f"nano={models[0]}", f"other={models[1]}", "--data", str(emoji_small),
                 "--view", "closed", "--langs", "en", "zh", "--n-boot", "100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["runs"]) == ["nano", "other"] and res["n_concepts"] > 0 and res["k"] == 1
    lo, hi = res["runs"]["other"]["minus_first_ci95"]
    assert lo <= res["runs"]["other"]["minus_first"] <= hi
    assert main(["compare", "--models", str(models[0]), "--data", str(emoji_small), "--view", "nosuch"]) != 0
