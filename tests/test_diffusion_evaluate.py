"""Generation retrieval with several renders a concept (three styles): ranks, chance and concept picking
against brute force."""
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from diffusion.evaluate import chance, concept_id, own_mask, own_ranks, pick_concepts, positives


def test_own_ranks_best_render_of_the_concept_against_brute_force():
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(30, 8, generator=g), dim=1)  # (G, D)
    emb = F.normalize(torch.randn(12, 8, generator=g), dim=1)  # (N, D)
    drawn = [f"c{j % 10}" for j in range(30)]  # 10 concepts, 3 renders each
    asked = [f"c{i % 10}" for i in range(12)]
    got = own_ranks(emb, gallery, own_mask(asked, drawn)).tolist()
    for i, c in enumerate(asked):
        order = sorted(range(30), key=lambda j: -float(emb[i] @ gallery[j]))
        want = 1 + next(pos for pos, j in enumerate(order) if drawn[j] == c)  # 1 + the renders above the best own
        assert got[i] == want
    # one render a concept: the rank is 1 + the items scored above the asked one
    idx, one = [3, 0, 7], [f"u{j}" for j in range(30)]
    scores = (emb[:3] @ gallery.T).tolist()
    want = [1 + sum(v > scores[i][j] for v in scores[i]) for i, j in enumerate(idx)]
    assert own_ranks(emb[:3], gallery, own_mask([one[j] for j in idx], one)).tolist() == want
    with pytest.raises(ValueError, match="not in the gallery"):
        own_mask(["nope"], drawn)


def test_chance_with_several_renders_against_enumeration():
    G, pos = 9, [1, 2, 3, 3]
    dist = []  # per concept, P(best own rank <= r) for r = 1..G by enumerating where its renders land
    for m in pos:
        placements = list(combinations(range(1, G + 1), m))
        dist.append([sum(min(p) <= r for p in placements) / len(placements) for r in range(1, G + 1)])
    mix = [sum(d[r] for d in dist) / len(dist) for r in range(G)]
    ch = chance(G, (1, 2, 5), pos)
    for k in (1, 2, 5):
        assert ch[f"R@{k}"] == pytest.approx(mix[k - 1])
    assert ch["median_rank"] == next(r + 1 for r in range(G) if mix[r] >= 0.5)
    assert chance(10, (1, 5)) == chance(10, (1, 5), [1, 1]) == {"R@1": 0.1, "R@5": 0.5, "median_rank": 5.5}


def test_pick_concepts_one_sample_a_concept():
    samples = [{"key": k, "meta": {"id": k.split("/")[0]}} for k in
               ["1f431", "1f431/twemoji", "1f431/openmoji", "1f436/twemoji", "2764"]]
    picked = pick_concepts(samples, 10, seed=0)
    assert sorted(concept_id(s) for s in picked) == ["1f431", "1f436", "2764"]
    assert {s["key"] for s in picked} == {"1f431", "1f436/twemoji", "2764"}  # the first key of each concept
    assert positives(picked, [concept_id(s) for s in samples]) == [
        {"1f431": 3, "1f436": 1, "2764": 1}[concept_id(s)] for s in picked]


def test_generation_recall_counts_any_style_of_the_concept(emoji3_full):
    """On the three-style build a generation that is the concept's render in *another* style than the picked
    sample's is found at rank 1 (any render of the concept is a hit); chance counts the concept's renders."""
    from test_diffusion_system import _RenderPipe

    from brivl.data.transforms import to_batch

    from brivl.data.views import load_view
    from brivl.factory import create_model
    from diffusion.evaluate import generation_recall

    judge = create_model("models/brivl-emoji3").eval()
    gallery, _ = load_view(emoji3_full, "closed")
    images = to_batch(gallery, judge.image_size, (0.0,) * 3, (1.0,) * 3)
    keys, drawn = [s["key"] for s in gallery], [concept_id(s) for s in gallery]
    train_keys = [s["key"] for s in gallery if s["meta"]["split"] == "train"]
    other = {concept_id(s): i for i, s in enumerate(gallery) if s["key"] != concept_id(s)}  # a non-Noto render
    concepts = [c for c in pick_concepts(load_view(emoji3_full, "test")[0], 40, seed=0) if concept_id(c) in other][:8]
    assert len(concepts) == 8 and all(c["key"] == concept_id(c) for c in concepts)  # the Noto sample was picked
    renders = {c["meta"]["captions"]["en"][0]: images[other[concept_id(c)]] for c in concepts}
    res = generation_recall(_RenderPipe(renders), judge, images, keys, concepts, ["en"], train_keys, ks=(1, 5),
                            n_boot=50, shuffled=False, progress=False, gallery_concepts=drawn)
    assert res["languages"]["en"]["R@1"] == 1.0 and res["languages"]["en"]["ranks"] == [1] * 8
    assert res["chance"] == chance(len(keys), (1, 5), positives(concepts, drawn))
    assert res["chance"]["R@1"] > 1 / len(keys)  # several renders a concept
    assert res["memorization"]["en"]["nn_is_asked_concept"] == 0.0  # held-out families: never a training render


def test_copy_agreement_by_hand_and_the_report_command(tmp_path, capsys):
    import json

    from diffusion.cli import main
    from diffusion.evaluate import copy_agreement, format_copy_agreement

    gen = {"en": {"keys": ["a", "b", "c", "d", "e"], "ranks": [3, 50, 400, 900, 20]}}
    copy = {"en": {"keys": ["e", "d", "c", "b", "a"], "ranks": [60, 800, 700, 90, 5]}}  # another order: matched by key
    got = copy_agreement(gen, copy, near=100, n_boot=100)["en"]
    # pairs (gen, copy): a (3, 5), b (50, 90), c (400, 700), d (900, 800), e (20, 60): the same order, rho = 1
    assert got["spearman"] == pytest.approx(1.0) and got["n"] == 5
    assert got["copy_near"] == {"n": 3, "median_rank": 20.0} and got["copy_far"] == {"n": 2, "median_rank": 650.0}
    assert "| en | 1.00 [" in format_copy_agreement({"en": got})
    assert copy_agreement(gen, {"zh": copy["en"]}) == {}  # no language in common: nothing to compare
    row = {"R@1": 0.2, "R@1_ci": [0.0, 0.4], "median_rank": 50.0, "median_rank_ci": [3.0, 900.0], "n": 5, **gen["en"]}
    result = {"split": "test", "scheduler": "ddim", "steps": 5, "copy_baseline": {
        "en": {**row, **copy["en"]}}, "by_guidance": {"3": {"languages": {"en": row}, "gallery": 10,
                                                             "chance": {"R@1": 0.1, "median_rank": 5.5}}}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"test": result}))  # a model folder's eval.json: one result per split
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test concepts, ddim 5 steps, guidance 3" in out and "| en, copy baseline |" in out and "| en | 1.00 [" in out
    path.write_text("{}")
    assert main(["report", str(path)]) == 2
    assert main(["report", str(tmp_path / "missing.json")]) == 2


def test_ranks_by_vocabulary_by_hand_and_report_with_data(emoji_small, tmp_path, capsys):
    import json

    from brivl.data.views import load_view
    from diffusion.cli import main
    from diffusion.evaluate import ranks_by_vocabulary

    names = {"a": {"en": "red heart", "zh": "红心"}, "b": {"en": "tiny robot"}, "c": {"en": "heart"}}
    vocab = {"en": {"red", "heart"}, "zh": {"红"}}
    gen = {"en": {"keys": ["a", "b", "c"], "ranks": [4, 700, 10]}, "zh": {"keys": ["a"], "ranks": [30]}}
    got = ranks_by_vocabulary(gen, names, vocab, n_boot=50)
    # en "red heart" and "heart" are known words; en "tiny robot" and zh "红心" (心 unseen) hold a new one
    assert got["seen words"]["n"] == 2 and got["seen words"]["median_rank"] == 7.0 and got["seen words"]["R@10"] == 1.0
    assert got["new word"]["n"] == 2 and got["new word"]["median_rank"] == 365.0 and got["new word"]["R@10"] == 0.0
    # the command on a real data folder: its test concepts' names, vocabulary from its train split
    test = load_view(emoji_small, "test")[0][:4]
    keys = [s["key"] for s in test]
    row = {"R@10": 0.5, "R@10_ci": [0.0, 1.0], "median_rank": 5.0, "median_rank_ci": [1.0, 9.0], "n": 4,
           "keys": keys, "ranks": [1, 5, 20, 900]}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"split": "test", "scheduler": "ddim", "steps": 5, "by_guidance": {
        "3": {"languages": {"en": row}, "gallery": 120, "chance": {"R@10": 0.08, "median_rank": 60.5}}}}))
    assert main(["report", str(path), "--data", str(emoji_small)]) == 0
    out = capsys.readouterr().out
    groups = [line for line in out.splitlines() if line.startswith("| test, guidance 3, ")]
    assert groups and sum(int(line.rsplit("|", 2)[1]) for line in groups) == 4  # every prompt in one group
