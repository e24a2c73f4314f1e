"""Retrieval metrics against a brute-force reference (clip_benchmark's convention)."""
import random

import pytest
import torch

from brivl.evaluate import chance_recall, format_table, recall_at_k, retrieval_metrics, zeroshot_metrics


def brute_recall(scores, positives, k):
    """For each query: sort the gallery by score, count 1 if any positive is among the first k."""
    hits = 0
    for q in range(len(scores)):
        order = sorted(range(len(scores[q])), key=lambda j: -scores[q][j])
        hits += any(positives[q][j] for j in order[:k])
    return hits / len(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, d = 30, 8
    owners = [i for i in range(n_img - 5) for _ in range(1 + i % 3)]  # 1-3 texts per image, 5 images without text
    img = torch.nn.functional.normalize(torch.randn(n_img, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img[owners] + 0.8 * torch.randn(len(owners), d, generator=g), dim=-1)
    res = retrieval_metrics(img, txt, torch.tensor(owners))
    sim = (txt @ img.T).tolist()
    pos_t2i = [[j == o for j in range(n_img)] for o in owners]
    for k in (1, 5, 10):
        assert res["t2i"][f"R@{k}"] == pytest.approx(brute_recall(sim, pos_t2i, k))
    with_text = sorted(set(owners))  # i2t: only images that have a text are queries
    sim_i2t = [[sim[t][i] for t in range(len(owners))] for i in with_text]
    pos_i2t = [[owners[t] == i for t in range(len(owners))] for i in with_text]
    for k in (1, 5, 10):
        assert res["i2t"][f"R@{k}"] == pytest.approx(brute_recall(sim_i2t, pos_i2t, k))
    assert res["t2i"]["mean"] == pytest.approx(sum(res["t2i"][f"R@{k}"] for k in (1, 5, 10)) / 3)


def test_recall_multi_positive_and_shape_check():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    pos = torch.tensor([[False, True, False], [True, False, False]])
    r = recall_at_k(scores, pos, (1, 2, 3))
    assert r == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}
    with pytest.raises(ValueError):
        recall_at_k(scores, pos[:, :2])


def test_perfect_and_worst_embeddings():
    eye = torch.eye(12)
    res = retrieval_metrics(eye, eye, torch.arange(12))
    assert res["t2i"]["R@1"] == 1.0 and res["i2t"]["R@1"] == 1.0
    res = retrieval_metrics(eye, -eye, torch.arange(12))  # the positive scores lowest of all
    assert res["t2i"]["R@1"] == 0.0 and res["t2i"]["R@10"] == 0.0


def test_zeroshot_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    img, cls = torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    labels = torch.randint(0, 9, (40,), generator=g)
    labels[0] = -1  # unknown class: skipped
    res = zeroshot_metrics(img, cls, labels)
    logits = (img @ cls.T).tolist()
    keep = [i for i in range(40) if labels[i] >= 0]
    for k in (1, 5):
        ref = brute_recall([logits[i] for i in keep], [[c == labels[i] for c in range(9)] for i in keep], k)
        assert res[f"acc@{k}"] == pytest.approx(ref)


def test_chance_recall():
    assert chance_recall(100, 1, 1) == pytest.approx(0.01)
    assert chance_recall(100, 1, 10) == pytest.approx(0.10)
    rng = random.Random(0)
    trials = 20000
    mc = sum(bool({0, 1} & set(rng.sample(range(50), 5))) for _ in range(trials)) / trials
    assert chance_recall(50, 2, 5) == pytest.approx(mc, abs=0.01)


def test_format_table_has_every_language():
    eye = torch.eye(5)
    m = retrieval_metrics(eye, eye, torch.arange(5))
    res = {"n_images": 5, "languages": {"en": m, "zh": m}, "zeroshot": {"en": {"acc@1": 1.0, "acc@5": 1.0}},
           "chance": {"R@1": 0.2, "R@5": 1.0, "R@10": 1.0}}
    table = format_table(res, "t")
    assert all(f"\n{lang} " in table for lang in ("en", "zh", "mean")) and "chance (N=5)" in table


def test_a_concept_in_several_styles_is_one_query_answered_by_any_render():
    from brivl.evaluate import concept_of, texts_by_language

    metas = [{"id": "a", "captions": {"en": ["cat"]}}, {"id": "b", "captions": {"en": ["dog"]}},
             {"id": "a", "captions": {"en": ["cat"]}}, {"captions": {"en": ["sun"]}}]
    assert concept_of(metas) == [0, 1, 0, 2]
    texts, pos = texts_by_language(metas, ["en"])["en"]
    assert texts == ["cat", "dog", "sun"]  # once per concept
    assert pos.tolist() == [[True, False, True, False], [False, True, False, False], [False, False, False, True]]
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    res = retrieval_metrics(img, txt, pos, ks=(1, 2))
    sim = txt @ img.T
    for k in (1, 2):  # brute force: a text is a hit when any render of its concept is in its top k
        hits = [any(pos[t, j] for j in sim[t].argsort(descending=True)[:k].tolist()) for t in range(3)]
        assert res["t2i"][f"R@{k}"] == pytest.approx(sum(hits) / 3)
        hits = [any(pos[t, i] for t in sim[:, i].argsort(descending=True)[:k].tolist()) for i in range(4)]
        assert res["i2t"][f"R@{k}"] == pytest.approx(sum(hits) / 4)


class _FixedTower:
    """A stand-in dual tower with given embeddings (texts looked up by caption)."""

    def __init__(self, image_emb, text_emb_of):
        self.image_emb, self.text_emb_of = image_emb, text_emb_of

    def eval(self):
        return self

    def embed_images(self, images, batch_size=512):
        return self.image_emb

    def embed_texts(self, texts, batch_size=512):
        return torch.stack([self.text_emb_of[t] for t in texts])


def test_closed_view_queries_by_split_match_brute_force():
    """On a view mixing splits, each split's queries are scored apart against the whole gallery."""
    from brivl.evaluate import evaluate_model
    from brivl.generalization import closed_by_split

    g = torch.Generator().manual_seed(3)
    names = [f"c{i}" for i in range(12)]
    split = ["train"] * 7 + ["val"] * 2 + ["test"] * 3
    metas = [{"id": n, "split": sp, "captions": {"en": [n]}} for n, sp in zip(names, split)] * 2  # two renders each
    img = torch.nn.functional.normalize(torch.randn(24, 6, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=-1)
    res = evaluate_model(_FixedTower(img, dict(zip(names, txt))), None, metas, ["en"], zeroshot=False)
    by = res["languages"]["en"]["t2i_by_split"]
    sim = txt @ img.T
    for sp in ("train", "val", "test"):
        qs = [q for q in range(12) if split[q] == sp]
        for k in (1, 5, 10):  # brute force: either render of the query's concept among its top k
            hits = [bool({q, q + 12} & set(sim[q].argsort(descending=True)[:k].tolist())) for q in qs]
            assert by[sp][f"R@{k}"] == pytest.approx(sum(hits) / len(qs))
        assert by[sp]["n_queries"] == len(qs)
    summary = closed_by_split(res)
    held = sum(by[sp]["R@1"] * by[sp]["n_queries"] for sp in ("val", "test"))
    assert summary["R@1 if train = 1"] == pytest.approx((7 + held) / 12)
    one_split = evaluate_model(_FixedTower(img[:14], dict(zip(names, txt))), None,
                               [dict(m, split="train") for m in metas[:14]], ["en"], zeroshot=False)
    assert "t2i_by_split" not in one_split["languages"]["en"] and closed_by_split(one_split) == {}
