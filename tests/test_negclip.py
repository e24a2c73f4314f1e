"""NegCLIP's fix for the relation kind (issue 15): composed two-emoji training items with an order-swapped hard
negative, and the loss that scores each image against them too."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from brivl.compositional import TEMPLATES
from brivl.losses import HardNegativeClipLoss, ParallelOrderLoss, SwapSeparationLoss


def test_hard_negative_loss_against_a_written_out_reference():
    g = torch.Generator().manual_seed(0)
    img, txt, neg = (F.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (5, 5, 3))
    scale = torch.tensor(10.0)
    got = HardNegativeClipLoss()(img, txt, neg, scale)
    cols = torch.cat([txt, neg])
    i2t = [-math.log(math.exp(scale * (img[i] @ txt[i])) / sum(math.exp(scale * (img[i] @ c)) for c in cols))
           for i in range(5)]
    t2i = [-math.log(math.exp(scale * (txt[i] @ img[i])) / sum(math.exp(scale * (txt[i] @ m)) for m in img))
           for i in range(5)]
    assert float(got) == pytest.approx((sum(i2t) / 5 + sum(t2i) / 5) / 2, rel=1e-5)
    # no negatives: open_clip's ClipLoss; a negative identical to the positive caption raises the loss
    from open_clip.loss import ClipLoss

    none = HardNegativeClipLoss()(img, txt, img.new_zeros(0, 8), scale)
    assert float(none) == pytest.approx(float(ClipLoss()(img, txt, scale)), rel=1e-6)
    assert float(HardNegativeClipLoss()(img, txt, txt[:1], scale)) > float(none)


def test_swap_separation_loss_against_a_written_out_reference():
    g = torch.Generator().manual_seed(1)
    x, y = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(2))
    y[0] = x[0]  # a pair the towers cannot tell apart: cosine 1
    want = sum(max(0.0, float(x[i] @ y[i]) - 0.2) for i in range(6)) / 6
    assert float(SwapSeparationLoss(0.2)(x, y)) == pytest.approx(want, rel=1e-6)
    assert float(SwapSeparationLoss(0.2)(x[:0], y[:0])) == 0.0
    assert float(SwapSeparationLoss(0.99)(x[1:], -x[1:])) == 0.0  # already apart: no gradient
    with pytest.raises(ValueError, match="margin"):
        SwapSeparationLoss(1.0)


def test_parallel_order_loss_against_a_written_out_reference():
    g = torch.Generator().manual_seed(2)
    a, p, n = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(3))
    tau = 0.1
    want = sum(-math.log(math.exp(float(a[i] @ p[i]) / tau)
                         / (math.exp(float(a[i] @ p[i]) / tau) + math.exp(float(a[i] @ n[i]) / tau)))
               for i in range(5)) / 5  # cross-entropy over [positive, hard negative], label 0
    assert float(ParallelOrderLoss(tau)(a, p, n)) == pytest.approx(want, rel=1e-5)
    assert float(ParallelOrderLoss(tau)(a[:0], p[:0], n[:0])) == 0.0
    assert float(ParallelOrderLoss(tau)(a, a, -a)) < 1e-8  # positive at cosine 1, negative at -1: nothing to learn
    with pytest.raises(ValueError, match="temperature"):
        ParallelOrderLoss(0.0)


def test_composed_items_carry_the_swapped_caption(emoji_small):
    """compose_p = 1: every item is two renders; its caption is a relation template over the two CLDR names in the
    caption's language and its negative the same template with the names swapped; the stream stays deterministic."""
    from brivl.data.datamodule import ShardDataModule
    from brivl.data.views import load_view

    names = {lang: {s["meta"]["names"][lang] for s in load_view(emoji_small, "train")[0]} for lang in ("en", "ja")}
    kw = dict(data_dir=str(emoji_small), batch_size=6, num_workers=0, langs=["en", "ja"], captions_per_image=2,
              shuffle_buffer=10, compose_p=1.0, epoch_samples=12)
    batch = next(iter(ShardDataModule(**kw).train_dataloader()))
    again = next(iter(ShardDataModule(**kw).train_dataloader()))
    assert torch.equal(batch["images"], again["images"]) and batch["negatives"] == again["negatives"]
    assert len(batch["negatives"]) == 2 and all(len(ns) == 6 for ns in batch["negatives"])
    for m in range(2):
        for text, lang, neg in zip(batch["texts"][m], batch["langs"][m], batch["negatives"][m]):
            found = [(rel, a, b) for rel, by_lang in TEMPLATES.items() for a in names[lang] for b in names[lang]
                     if a != b and text == by_lang[lang].format(a=a, b=b) and neg == by_lang[lang].format(a=b, b=a)]
            assert found, (text, neg, lang)
    plain = next(iter(ShardDataModule(**{**kw, "compose_p": 0.0}).train_dataloader()))
    assert plain["negatives"] == [[None] * 6, [None] * 6]


def test_mirrored_composites_are_each_others_hard_negatives(emoji_small):
    """compose_mirror: each composite is followed, in the same batch, by its mirror (the renders swapped): the
    mirror's caption is the composite's hard negative and the other way round, in every caption set."""
    from brivl.data.datamodule import ShardDataModule

    kw = dict(data_dir=str(emoji_small), batch_size=6, num_workers=0, langs=["en", "ja"], captions_per_image=2,
              shuffle_buffer=10, compose_p=1.0, compose_mirror=True, epoch_samples=12)
    batch = next(iter(ShardDataModule(**kw).train_dataloader()))
    again = next(iter(ShardDataModule(**kw).train_dataloader()))
    assert torch.equal(batch["images"], again["images"])
    for m in range(2):
        texts, negs = batch["texts"][m], batch["negatives"][m]
        for i in range(0, 6, 2):
            assert texts[i + 1] == negs[i] and negs[i + 1] == texts[i] and texts[i] != texts[i + 1]
            assert batch["langs"][m][i] == batch["langs"][m][i + 1]
    for i in range(0, 6, 2):  # the same draw of scale and placement, the two renders swapped: not the same image
        assert not torch.equal(batch["images"][i], batch["images"][i + 1])
    assert batch["mirror_pairs"].tolist() == [[0, 1], [2, 3], [4, 5]]
    # an odd batch: the last slot takes a composite without its mirror, which is dropped, not carried over
    first, second = list(itertools.islice(iter(ShardDataModule(**{**kw, "batch_size": 5}).train_dataloader()), 2))
    t, n = first["texts"][0], first["negatives"][0]
    assert t[1] == n[0] and t[3] == n[2] and t[4] not in (n[3], t[3])
    assert first["mirror_pairs"].tolist() == [[0, 1], [2, 3]]  # row 4 lost its mirror: no pair
    assert second["texts"][0][0] != n[4] and second["texts"][0][1] == second["negatives"][0][0]


def _system_and_batch(emoji_small, langs, captions, mirror, **system_kw):
    """A brivl-nano DualTowerSystem with hard negatives (logging off, outside a Trainer), the first training batch
    that holds a composite, and its embeddings: images (B, D), caption sets (M, B, D), the swapped negatives
    (N, D) and, per set, the rows that have one."""
    from brivl.data.datamodule import ShardDataModule
    from brivl.system import DualTowerSystem

    sys_ = DualTowerSystem(model="brivl-nano", tokenizer=str(emoji_small / "tokenizer"), hard_negatives=True,
                           **system_kw)
    sys_.log = sys_.log_dict = lambda *a, **k: None
    m = sys_.model
    dm = ShardDataModule(data_dir=str(emoji_small), batch_size=6, num_workers=0, langs=langs,
                         captions_per_image=captions, shuffle_buffer=10, compose_p=0.5, compose_mirror=mirror,
                         epoch_samples=12)
    dm.configure_preprocess(m.image_size, *m.image_mean_std)
    batch = next(b for b in dm.train_dataloader() if any(n for ns in b["negatives"] for n in ns))
    with torch.no_grad():
        img = m.encode_image(batch["images"])
        txt = torch.stack([m.encode_text(m.tokenize(ts)) for ts in batch["texts"]])  # (M, B, D)
        neg = m.encode_text(m.tokenize([n for ns in batch["negatives"] for n in ns if n]))
    rows = [[b for b, n in enumerate(ns) if n] for ns in batch["negatives"]]
    return sys_, batch, (img, txt, neg, rows)


def test_swap_separation_term_pairs_the_right_rows(emoji_small):
    """DualTowerSystem.swap_separation: each caption with its own swapped negative, each composite with its mirror,
    recomputed here pair by pair from the same embeddings."""
    from brivl.system import DualTowerSystem

    sys_, batch, (img, txt, neg, rows) = _system_and_batch(emoji_small, ["en", "ja"], 2, True, swap_margin=0.0)
    m = sys_.model
    assert len(batch["mirror_pairs"]) >= 1
    with torch.no_grad():
        got = float(sys_.swap_separation(img, txt, neg, rows, batch["mirror_pairs"]))
    text_terms = [max(0.0, float(txt[k][b] @ m.encode_text(m.tokenize([n]))[0]))
                  for k, ns in enumerate(batch["negatives"]) for b, n in enumerate(ns) if n]
    image_terms = [max(0.0, float(img[i] @ img[j])) for i, j in batch["mirror_pairs"].tolist()]
    assert got == pytest.approx(sum(text_terms) / len(text_terms) + sum(image_terms) / len(image_terms), rel=1e-4)
    with pytest.raises(ValueError, match="swap_margin needs hard_negatives"):
        DualTowerSystem(model="brivl-nano", tokenizer=str(emoji_small / "tokenizer"), swap_margin=0.5)


def test_parallel_order_term_pairs_the_right_rows(emoji_small):
    """DualTowerSystem.parallel_order: each composite's caption in one set against its caption in every other set
    (positive) and that set's swapped caption (negative), recomputed here triple by triple."""
    from brivl.system import DualTowerSystem

    sys_, batch, (_, txt, neg, rows) = _system_and_batch(emoji_small, ["en", "ja", "zh"], 3, False,
                                                         parallel_order_temperature=0.1)
    m = sys_.model
    with torch.no_grad():
        got = float(sys_.parallel_order(txt, neg, rows))

        def emb(t):
            return m.encode_text(m.tokenize([t]))[0]

        terms = []
        negs, texts = batch["negatives"], batch["texts"]
        for i in range(3):
            for k in range(3):
                for b in range(len(texts[0])):
                    if i != k and negs[i][b] and negs[k][b]:
                        a, p, n = emb(texts[i][b]), emb(texts[k][b]), emb(negs[k][b])
                        terms.append(float(F.softplus((a @ n - a @ p) / 0.1)))
    assert terms and got == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert float(sys_.parallel_order(txt[:1], neg[:len(rows[0])], rows[:1])) == 0.0  # one set: no parallel caption
    with pytest.raises(ValueError, match="parallel_order_temperature needs hard_negatives"):
        DualTowerSystem(model="brivl-nano", tokenizer=str(emoji_small / "tokenizer"), parallel_order_temperature=0.1)


def test_fit_with_hard_negatives_logs_them(emoji_small, tmp_path):
    from test_pipeline import _fit

    run = _fit(tmp_path, emoji_small, "--model.hard_negatives", "true", "--data.compose_p", "0.5",
               "--data.compose_mirror", "true", "--model.swap_margin", "0.5",
               "--model.parallel_order_temperature", "0.1", steps=3, name="negclip")
    rows = (run / "metrics.csv").read_text()
    assert all(k in rows for k in ("train/hard_negatives", "train/loss", "train/swap_text", "train/swap_image",
                                   "train/parallel_order"))
    with pytest.raises(ValueError, match="hard_negatives goes with loss='clip'"):
        from brivl.system import DualTowerSystem

        DualTowerSystem(model="brivl-nano", tokenizer=str(emoji_small / "tokenizer"), loss="moco", hard_negatives=True)
