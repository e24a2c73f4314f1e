"""The compositional tier (Winoground-style groups on the emoji data), scores checked by hand."""
import json

import pytest
import torch

from brivl.compositional import CHANCE, TEMPLATES, attribute_groups, compose, winoground_scores
from brivl.data.emoji import M9


def test_scores_against_the_definition():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(500, 2, 2, generator=g)
    sc = winoground_scores(sim)
    for k in range(500):
        s = sim[k].tolist()  # s[c][i]
        text = s[0][0] > s[1][0] and s[1][1] > s[0][1]
        image = s[0][0] > s[0][1] and s[1][1] > s[1][0]
        assert (sc["text"][k].item(), sc["image"][k].item(), sc["group"][k].item()) == (text, image, text and image)
    # random scores land near chance: 1/4, 1/4, 1/6
    for key, chance in CHANCE.items():
        assert abs(sc[key].float().mean().item() - chance) < 0.06
    # an order-blind model (the same score for both captions) never passes the text score
    blind = torch.tensor([[[0.5, 0.2], [0.5, 0.2]]])
    assert not winoground_scores(blind)["text"].item()


def test_attribute_groups_from_cldr_names():
    names = ["red heart", "blue heart", "green circle", "red circle", "up arrow", "down arrow", "bow and arrow",
             "man pilot", "woman pilot", "man genie", "cat"]
    samples = [{"meta": {"names": {"en": n}}} for n in names]
    kinds = attribute_groups(samples)
    pairs = {k: {frozenset(names[i] for i in p) for p in v} for k, v in kinds.items()}
    assert pairs["colour"] == {frozenset({"red heart", "blue heart"}), frozenset({"green circle", "red circle"})}
    assert pairs["direction"] == {frozenset({"up arrow", "down arrow"})}
    assert pairs["gender"] == {frozenset({"man pilot", "woman pilot"})}  # no woman genie: no group


def test_templates_cover_m9_and_compose_places_the_emoji():
    from PIL import Image

    assert all(set(t) == set(M9) for t in TEMPLATES.values())
    red = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    blue = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    left = compose(red, blue, "left of", 64)
    assert left.getpixel((10, 32))[:3] == (255, 0, 0) and left.getpixel((54, 32))[:3] == (0, 0, 255)
    above = compose(red, blue, "above", 64)
    assert above.getpixel((32, 10))[:3] == (255, 0, 0) and above.getpixel((32, 54))[:3] == (0, 0, 255)


def test_cli_reports_every_kind_per_language(emoji_small, models, capsys):
    from brivl.cli import main

    assert main(["compositional", "--model", str(models[0]), "--data", str(emoji_small), "--relations", "20",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"left of", "above"} <= set(res["kinds"])
    for kind in ("left of", "above"):
        per = res["kinds"][kind]["languages"]
        assert set(per) == set(M9) and all(v["n"] == 20 for v in per.values())
        assert all(0 <= v["group"] <= min(v["text"], v["image"]) <= 1 for v in per.values())
    # caption_cos: the mean cosine of each group's two captions, recomputed here caption by caption (the
    # relation kind: its pairs are drawn with the same seed)
    import itertools
    import random

    from brivl.data.views import load_view
    from brivl.factory import create_model

    model = create_model(str(models[0]))
    samples = load_view(emoji_small, "closed")[0]
    pairs = random.Random(0).sample(list(itertools.permutations(range(len(samples)), 2)), 20)
    name = lambda i: samples[i]["meta"]["names"]["en"]  # noqa: E731
    caps = [TEMPLATES["left of"]["en"].format(a=name(x), b=name(y)) for a, b in pairs for x, y in ((a, b), (b, a))]
    e = model.embed_texts(caps).view(len(pairs), 2, -1)
    ref = sum(float(e[g, 0] @ e[g, 1]) for g in range(len(pairs))) / len(pairs)
    assert res["kinds"]["left of"]["languages"]["en"]["caption_cos"] == pytest.approx(ref, abs=2e-4)
    # image_cos: the same for the group's two composed images, A|B and B|A, embedded one by one
    from brivl.compositional import compose
    from brivl.data.transforms import to_batch

    size, (mean, std) = model.image_size, model.image_mean_std
    cos = []
    for a, b in pairs:
        ims = [compose(samples[x]["image"], samples[y]["image"], "left of", max(size, 64)) for x, y in ((a, b), (b, a))]
        e = model.embed_images(to_batch([{"image": im} for im in ims], size, mean, std))
        cos.append(float(e[0] @ e[1]))
    got = res["kinds"]["left of"]["languages"]["en"]["image_cos"]
    assert got == pytest.approx(sum(cos) / len(cos), abs=2e-6) and got < 1  # the two orders differ, if barely
    assert main(["eval", "--model", str(models[0]), "--data", str(emoji_small), "--view", "compositional:test"]) == 0
    assert "Winoground-style groups on test emoji" in capsys.readouterr().out


def test_export_writes_the_compositional_rows_and_write_adds_them(emoji_small, tmp_path, capsys):
    """Every exported dual tower's eval.json has a compositional row (closed and test), and `compositional --write`
    puts the same row into an existing eval.json."""
    from brivl.cli import main
    from test_pipeline import _fit

    run = _fit(tmp_path, emoji_small, steps=2)
    out = tmp_path / "model"
    assert main(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--config", str(run / "config.yaml"),
                 "--out", str(out), "--eval-data", str(emoji_small)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert {"closed", "test", "compositional", "compositional:test"} <= set(ev)
    for key in ("compositional", "compositional:test"):
        rel = ev[key]["kinds"]["left of"]
        assert set(rel["languages"]) == set(M9) and 0 <= rel["mean"]["group"] <= rel["mean"]["text"] <= 1
    assert ev["compositional"]["view"] == "compositional (closed)" and ev["compositional:test"]["n_samples"] < \
        ev["compositional"]["n_samples"]
    kept = ev.pop("compositional")
    (out / "eval.json").write_text(json.dumps(ev))
    capsys.readouterr()
    assert main(["compositional", "--model", str(out), "--data", str(emoji_small), "--write", "--json"]) == 0
    again = json.loads((out / "eval.json").read_text())["compositional"]
    assert again["kinds"] == kept["kinds"] and set(json.loads((out / "eval.json").read_text())) >= {"closed", "test"}
    (out / "eval.json").unlink()
    assert main(["compositional", "--model", str(out), "--data", str(emoji_small), "--write"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_order_agreement_against_pairs_scored_one_by_one(emoji_small, models, capsys):
    """brivl compositional --order-agreement: per language, the share of the groups' pairs whose caption is closer
    to the English caption of the same meaning than to the swapped one, recomputed pair by pair."""
    from brivl.cli import main
    from brivl.compositional import relation_pairs
    from brivl.data.views import load_view
    from brivl.factory import create_model

    assert main(["compositional", "--model", str(models[0]), "--data", str(emoji_small), "--langs", "en", "ja",
                 "--relations", "20", "--order-agreement", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["order_agreement"]
    assert got["reference"] == "en" and set(got["left of"]) == {"ja"}  # the reference is not scored against itself
    model = create_model(str(models[0])).eval()
    samples, _ = load_view(emoji_small, "closed")
    name = lambda i, lang: samples[i]["meta"]["names"].get(lang)  # noqa: E731
    agree = []
    for a, b in relation_pairs(len(samples), 20):
        if not all(name(i, lang) for i in (a, b) for lang in ("en", "ja")):
            continue
        ja, same, swap = model.embed_texts([TEMPLATES["left of"]["ja"].format(a=name(a, "ja"), b=name(b, "ja")),
                                            TEMPLATES["left of"]["en"].format(a=name(a, "en"), b=name(b, "en")),
                                            TEMPLATES["left of"]["en"].format(a=name(b, "en"), b=name(a, "en"))])
        agree.append(float(ja @ same > ja @ swap))
    assert got["left of"]["ja"]["n"] == len(agree) > 0
    assert got["left of"]["ja"]["agree"] == pytest.approx(sum(agree) / len(agree), abs=1e-4)
