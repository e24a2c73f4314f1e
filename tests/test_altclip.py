"""AltCLIP: open_clip -> HF vision conversion, AltCLIPModel interop, teacher learning, stage 2, bad input."""
import csv
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from altclip.convert import UnsupportedTowerError, vision_config_from_open_clip
from altclip.data import cldr_pairs, read_parallel_corpus
from altclip.losses import TeacherLearningLoss
from altclip.model import build_student, encode_prompt_states
from brivl.data.emoji import M9
from brivl.hf_clip import HFDualTower
from brivl.factory import create_model
from brivl.model import ConfigMismatchError
from brivl.tokenizer import PAD_ID, train_tokenizer

TEXTS = ["cat face", "chat", "猫", "кошка", "dog", "chien", "犬", "собака", "red heart", "cœur rouge", "赤いハート",
         "빨간 하트", "قلب أحمر", "cuore rosso", "corazón rojo", "sun", "soleil", "太阳", "солнце"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=120)


@pytest.fixture(scope="module")
def teacher(tok_dir):
    torch.manual_seed(0)
    return create_model("brivl-nano", tokenizer=str(tok_dir)).eval()


def _tiny_student_cfg(tmp_path, projection=None):
    """A student text config file: like altclip-xlmr-tiny, but tiny."""
    cfg = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
           "project_dim": 24, "context_length": 16}
    path = tmp_path / "xlmr-test.json"
    path.write_text(json.dumps(cfg))
    return path


def test_converted_image_tower_matches_open_clip(teacher, tok_dir, monkeypatch, tmp_path):
    import altclip.model as am

    monkeypatch.setattr(am, "CONFIG_DIR", _tiny_student_cfg(tmp_path).parent)
    student = build_student(teacher, "xlmr-test", str(tok_dir)).eval()
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ours, theirs = student.encode_image(images), teacher.encode_image(images)
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # distinct images, distinct embeddings (not a constant)
    assert student.logit_scale.item() == pytest.approx(teacher.logit_scale.item())
    # text: CLS state of the per-token conditioning through text_projection == the text embedding
    states, mask = encode_prompt_states(student, ["猫", "red heart"])
    assert states.shape == (2, 16, 24) and mask[:, 0].all() and not mask.all()
    emb = F.normalize(student.clip.text_projection(states[:, 0]), dim=-1)
    assert torch.allclose(emb, student.embed_texts(["猫", "red heart"]), atol=1e-6)


def test_student_folder_is_a_transformers_altclip_model(teacher, tok_dir, monkeypatch, tmp_path):
    """Export to the AltCLIPModel layout: transformers loads it and agrees with our API within 1e-5."""
    from transformers import AltCLIPModel, AutoTokenizer

    import altclip.model as am

    monkeypatch.setattr(am, "CONFIG_DIR", _tiny_student_cfg(tmp_path).parent)
    student = build_student(teacher, "xlmr-test", str(tok_dir)).eval()
    folder = student.save_pretrained(tmp_path / "alt")
    hf = AltCLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=images)
    loaded = create_model(str(folder)).eval()
    assert isinstance(loaded, HFDualTower)
    assert (loaded.embed_texts(TEXTS) - out.text_embeds).abs().max() < 1e-5
    assert (loaded.embed_images(images) - out.image_embeds).abs().max() < 1e-5
    assert (loaded.embed_images(images) - teacher.embed_images(images)).abs().max() < 1e-5


def test_random_altclip_model_loads_through_our_api(tok_dir, tmp_path):
    """A tiny random transformers AltCLIPModel (BAAI/AltCLIP's layout) loads by folder, same embeddings."""
    from transformers import AltCLIPConfig, AltCLIPModel, AutoTokenizer, CLIPImageProcessor

    torch.manual_seed(0)
    text = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                project_dim=48, max_position_embeddings=40, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=24,
                  patch_size=6)
    hf = AltCLIPModel(AltCLIPConfig(text_config=text, vision_config=vision, projection_dim=20)).eval()
    folder = tmp_path / "tiny-altclip"
    hf.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(folder)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}, image_mean=mean,
                       image_std=std).save_pretrained(folder)

    model = create_model(str(folder)).eval()
    assert model.embed_dim == 20 and model.image_size == 24 and model.image_mean_std == (tuple(mean), tuple(std))
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    images = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_t = F.normalize(hf.get_text_features(**enc).pooler_output, dim=-1)
        ref_i = F.normalize(hf.get_image_features(pixel_values=images).pooler_output, dim=-1)
    assert (model.embed_texts(TEXTS) - ref_t).abs().max() < 1e-5
    assert (model.embed_images(images) - ref_i).abs().max() < 1e-5


def test_width_mismatch_and_unsupported_towers_are_clear_errors(teacher, tok_dir, tmp_path):
    other = create_model("brivl-tiny", tokenizer=str(tok_dir))  # embeds 128-d, teacher 32-d
    folder = build_student(other, "altclip-xlmr-tiny", str(tok_dir)).save_pretrained(tmp_path / "s128")
    with pytest.raises(ConfigMismatchError, match="projects to 128-d but the teacher embeds 32-d"):
        build_student(teacher, str(folder))
    with pytest.raises(ValueError, match="projection must output the teacher's embedding width"):
        TeacherLearningLoss("mse")(torch.zeros(2, 128), torch.zeros(2, 32))
    with pytest.raises(UnsupportedTowerError, match="only ViT"):
        vision_config_from_open_clip(torch.nn.Linear(2, 2), 32)


def test_teacher_learning_losses():
    s, t = torch.randn(6, 8), torch.randn(6, 8)
    assert TeacherLearningLoss("mse")(s, t) == pytest.approx(((s - t) ** 2).mean().item())
    assert TeacherLearningLoss("cosine")(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # contrastive: rows 0 and 1 share an English target, so neither is the other's negative
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    loss = TeacherLearningLoss("contrastive", 0.1)(s, t, groups)
    logits = F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).T / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(6)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="one of mse, cosine, contrastive"):
        TeacherLearningLoss("kl")


def test_bank_contrastive_loss_equals_a_per_row_softmax():
    """Against a memory bank (T, D): each row's -log softmax over all T columns but those marked as no
    negative (its own label always counts), computed row by row."""
    torch.manual_seed(0)
    s, bank = torch.randn(4, 8), torch.randn(7, 8)
    labels = torch.tensor([2, 0, 6, 2])
    not_negative = torch.zeros(4, 7, dtype=torch.bool)
    not_negative[0, [2, 3]] = not_negative[3, [2, 3, 5]] = True  # rows 0, 3: columns 3 (and 5) are their concept's
    loss = TeacherLearningLoss("contrastive", 0.1)(s, bank[labels], bank=bank, labels=labels, not_negative=not_negative)
    want = []
    for i in range(4):
        sims = [float(F.cosine_similarity(s[i], bank[j], dim=0)) / 0.1 for j in range(7)]
        keep = [j for j in range(7) if j == labels[i] or not not_negative[i, j]]
        want.append(-sims[labels[i]] + torch.logsumexp(torch.tensor([sims[j] for j in keep]), 0).item())
    assert loss.item() == pytest.approx(sum(want) / 4, rel=1e-5)
    plain = TeacherLearningLoss("contrastive", 0.1)(s, bank[labels], bank=bank, labels=labels)
    assert plain.item() > loss.item()  # masking columns only removes negatives


def test_trimmed_padding_gives_the_full_context_features(teacher, tok_dir, monkeypatch, tmp_path):
    """encode_text drops all-pad trailing columns; the features equal the model run on the full context."""
    import altclip.model as am
    from brivl.hf_clip import _features, trim_padding

    monkeypatch.setattr(am, "CONFIG_DIR", _tiny_student_cfg(tmp_path).parent)
    student = build_student(teacher, "xlmr-test", str(tok_dir)).eval()
    ids = student.tokenize(["猫", "dog", "red heart"])  # (3, 16), mostly padding
    short = trim_padding(ids, student.pad_id)
    assert short.shape[1] < ids.shape[1] and torch.equal(short, ids[:, : short.shape[1]])
    assert (ids[:, short.shape[1]:] == student.pad_id).all()
    with torch.no_grad():
        full = _features(student.clip.get_text_features(input_ids=ids, attention_mask=(ids != student.pad_id).long()))
        assert (student.encode_text(ids, normalize=False) - full).abs().max() < 1e-5
    assert trim_padding(torch.full((2, 5), student.pad_id), student.pad_id).shape == (2, 1)


def test_length_grouped_batches_cover_the_corpus(emoji_small):
    """group_by_length: every pair comes once an epoch (drop_last aside), in batches of similar length."""
    from altclip.data import ParallelTextDataModule

    kw = dict(data_dir=str(emoji_small), view="train", langs=list(M9), batch_size=8)
    grouped, plain = ParallelTextDataModule(group_by_length=True, **kw), ParallelTextDataModule(**kw)
    spreads = {}
    for name, dm in (("grouped", grouped), ("plain", plain)):
        dm.setup()
        batches = list(dm.train_dataloader())
        seen = Counter((t, e, l) for b in batches for t, e, l in zip(b["texts"], b["english"], b["langs"]))
        assert sum(seen.values()) == len(dm.corpus.pairs) // 8 * 8  # drop_last only
        assert seen <= Counter(dm.corpus.pairs)  # no pair twice
        spreads[name] = sum(max(map(len, b["texts"])) - min(map(len, b["texts"])) for b in batches)
    assert spreads["grouped"] < spreads["plain"]


def test_parallel_corpora_skip_and_count_bad_rows(emoji_small, tmp_path):
    corpus = cldr_pairs(str(emoji_small), "train")
    assert set(corpus.languages) >= set(M9)
    assert ("red heart", "red heart", "en") in corpus.pairs or any(l == "en" and a == b for a, b, l in corpus.pairs)
    zh = [p for p in corpus.pairs if p[2] == "zh"]
    assert zh and all(p[0] and p[1] for p in zh)
    with pytest.raises(ValueError, match="no parallel text for xx; this corpus has: .*zh"):
        corpus.select(["zh", "xx"])
    tsv = tmp_path / "p.tsv"
    tsv.write_text("en\ttext\tlang\ncat\t猫\tzh\n\t犬\tja\ndog\t\tfr\nsun\tsoleil\tfr\n", encoding="utf-8")
    c = read_parallel_corpus(str(tsv))
    assert c.pairs == [("猫", "cat", "zh"), ("soleil", "sun", "fr")] and c.skipped["missing or empty side"] == 2
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"en": "cat", "text": "кошка", "lang": "ru"}\nnot json\n{"en": "", "text": "x"}\n')
    c = read_parallel_corpus(str(jl))
    assert c.pairs == [("кошка", "cat", "ru")] and c.skipped == {"bad JSON line": 1, "missing or empty side": 1}
    with pytest.raises(FileNotFoundError):
        read_parallel_corpus(str(tmp_path / "none.tsv"))


def test_teacher_targets_cache_equals_the_teacher(teacher, tok_dir, monkeypatch, tmp_path):
    """The teacher-feature cache gives exactly the frozen teacher's features, embeds each distinct English
    text once, and stops growing at teacher_cache_size (beyond it, features are computed per batch)."""
    import altclip.model as am
    from altclip.system import TeacherLearningSystem

    monkeypatch.setattr(am, "CONFIG_DIR", _tiny_student_cfg(tmp_path).parent)
    teacher.save_pretrained(tmp_path / "teacher")
    english = ["cat face", "dog", "cat face", "sun", "red heart", "dog"]
    want = teacher.encode_text(teacher.tokenize(english), normalize=False)
    calls = []
    for size, cached in ((100, 4), (3, 0)):
        system = TeacherLearningSystem(str(tmp_path / "teacher"), "xlmr-test", str(tok_dir), teacher_cache_size=size)
        encode = system.teacher.encode_text
        monkeypatch.setattr(system.teacher, "encode_text", lambda ids, **kw: calls.append(len(ids)) or encode(ids, **kw))
        calls.clear()
        for _ in range(2):
            got = system.teacher_targets(english)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
        assert len(system._teacher_cache) == cached
        assert calls == ([4] if cached else [4, 4])  # distinct texts only; with the cache, once


def _lightning(tmp_path, name, config, extra):
    from altclip.cli import main

    args = ["fit", "--config", config, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", *extra]
    assert main(args) == 0
    return next((tmp_path / name).glob("version_*"))


def test_two_stage_recipe_end_to_end(emoji_small, tmp_path, capsys):
    """Stage 1 (teacher learning on parallel text) -> export -> stage 2 (locked image tower) -> export -> eval."""
    from altclip.cli import main as altclip_main
    from brivl.cli import main as brivl_main

    teacher_dir = tmp_path / "teacher"
    torch.manual_seed(0)
    create_model("brivl-nano", tokenizer=str(emoji_small / "tokenizer")).save_pretrained(teacher_dir)
    common = ["--model.init_args.tokenizer", str(emoji_small / "tokenizer")]
    run1 = _lightning(tmp_path, "distill", "configs/altclip-distill.yaml", [
        "--model.init_args.teacher", str(teacher_dir), "--model.init_args.warmup_steps", "2", "--model.init_args.lr",
        "0.003", "--data.init_args.data_dir", str(emoji_small), "--data.init_args.batch_size", "32", *common])
    with open(run1 / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the student moves toward the teacher
    ckpts = run1 / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 6  # the last step
    assert len(list(ckpts.glob("best-step=*.ckpt"))) == 1  # the best by val/t2i_R@1, kept beside it
    stage1 = tmp_path / "stage1"
    assert altclip_main(["export", "--ckpt", str(run1 / "checkpoints" / "last.ckpt"), "--out", str(stage1),
                         "--config", str(run1 / "config.yaml")]) == 0
    assert (stage1 / "config.json").is_file() and (stage1 / "model.safetensors").is_file()

    images_before = create_model(str(stage1)).clip.vision_model.state_dict()
    run2 = _lightning(tmp_path, "contrastive", "configs/altclip-contrastive.yaml", [
        "--model.init_args.model", str(stage1), "--model.init_args.warmup_steps", "2",
        "--data.init_args.data_dir", str(emoji_small), "--data.init_args.batch_size", "16",
        "--data.init_args.num_workers", "0"])
    stage2 = tmp_path / "stage2"
    assert brivl_main(["export", "--ckpt", str(run2 / "checkpoints" / "last.ckpt"), "--out", str(stage2)]) == 0
    tuned = create_model(str(stage2))
    assert all(torch.equal(v, tuned.clip.vision_model.state_dict()[k]) for k, v in images_before.items())  # locked
    capsys.readouterr()
    assert brivl_main(["eval", "--model", str(stage2), "--data", str(emoji_small), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["languages"]) == set(M9)


def test_bank_negatives_hold_every_english_target(emoji_small, tmp_path, monkeypatch):
    """negatives: bank: the teacher's features of every distinct English side, the concept membership of the
    columns from the CLDR keys, a clear error for a non-contrastive loss, and a stage-1 fit whose loss falls."""
    from altclip.data import ParallelTextDataModule
    from altclip.system import TeacherLearningSystem

    tok = str(emoji_small / "tokenizer")
    teacher_dir = tmp_path / "teacher"
    torch.manual_seed(0)
    create_model("brivl-nano", tokenizer=tok).save_pretrained(teacher_dir)
    with pytest.raises(ValueError, match="negatives: bank is for loss: contrastive"):
        TeacherLearningSystem(str(teacher_dir), "altclip-xlmr-tiny", tok, loss="mse", negatives="bank")
    system = TeacherLearningSystem(str(teacher_dir), "altclip-xlmr-tiny", tok, loss="contrastive", negatives="bank")
    dm = ParallelTextDataModule(data_dir=str(emoji_small), view="train", langs=["en", "zh"])
    dm.setup()
    with monkeypatch.context() as m:  # the bank reads the corpus from trainer.datamodule
        m.setattr(TeacherLearningSystem, "trainer", type("T", (), {"datamodule": dm})(), raising=False)
        bank, column, (row, member) = system.teacher_bank()
    english = sorted(column, key=column.get)
    assert english == list(dict.fromkeys(e for _, e, _ in dm.corpus.pairs)) and bank.shape[0] == len(english)
    with torch.no_grad():
        want = system.teacher.encode_text(system.teacher.tokenize(english), normalize=False)
    assert torch.allclose(bank, want, atol=1e-5)
    for (_, e, _), k in zip(dm.corpus.pairs, dm.corpus.keys):
        assert member[row[k], column[e]]
    assert member.sum() == len({(k, e) for (_, e, _), k in zip(dm.corpus.pairs, dm.corpus.keys)})

    run = _lightning(tmp_path, "bank", "configs/altclip-distill.yaml", [
        "--model.init_args.teacher", str(teacher_dir), "--model.init_args.tokenizer", tok,
        "--model.init_args.negatives", "bank", "--model.init_args.warmup_steps", "2", "--model.init_args.lr", "0.003",
        "--data.init_args.data_dir", str(emoji_small), "--data.init_args.batch_size", "32"])
    with open(run / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_missing_language_is_named(emoji_small, tmp_path, capsys):
    from altclip.cli import main

    teacher_dir = tmp_path / "teacher"
    create_model("brivl-nano", tokenizer=str(emoji_small / "tokenizer")).save_pretrained(teacher_dir)
    assert main(["fit", "--config", "configs/altclip-distill.yaml", "--model.init_args.teacher", str(teacher_dir),
              "--model.init_args.tokenizer", str(emoji_small / "tokenizer"), "--data.init_args.data_dir",
              str(emoji_small), "--data.init_args.langs", "[en, tlh]", "--trainer.max_steps", "1",
              "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: no names in tlh in {emoji_small}; covered languages")
    assert err[-1].endswith(": ar en es fr it ja ko ru zh")
    assert "Traceback" not in "\n".join(err)


def test_ablation_table_checks_the_targets():
    from altclip.cli import ablation_table

    def res(vals):
        return {"languages": {lang: {"t2i": {"R@1": v}} for lang, v in vals.items()}}

    langs = ["en", "zh", "ar"]
    rows = {"stage 1": res({"en": 0.5, "zh": 0.4, "ar": 0.3}), "stage 2": res({"en": 0.8, "zh": 0.78, "ar": 0.6}),
            "scratch": res({"en": 0.2, "zh": 0.1, "ar": 0.0})}
    table, checks = ablation_table(res({"en": 0.8}), rows, langs)
    assert checks["worst_lang"] == "ar" and checks["worst_ratio"] == pytest.approx(0.6 / 0.8)
    assert checks["margin_over_last"] == pytest.approx((0.8 + 0.78 + 0.6) / 3 - 0.1)
    assert "| stage 2 | 0.800 | 0.780 | 0.600 | 0.727 |" in table and "| English teacher (en only) | 0.800" in table
    _, two = ablation_table(res({"en": 0.8}), {k: rows[k] for k in ("stage 1", "stage 2")}, langs)
    assert "margin_over_last" not in two and two["worst_lang"] == "ar"  # no baseline row: no margin
    rows["fair scratch"] = res({"en": 0.5, "zh": 0.5, "ar": 0.2})  # a second baseline: a margin against each
    _, four = ablation_table(res({"en": 0.8}), rows, langs)
    stage2 = (0.8 + 0.78 + 0.6) / 3
    assert four["margins"] == pytest.approx({"scratch": stage2 - 0.1, "fair scratch": stage2 - 0.4})
    assert four["margin_over_last"] == pytest.approx(stage2 - 0.4)


def test_ablation_table_tabulates_the_asked_recall_and_names_a_missing_view(tmp_path, capsys):
    """issue 14: the held-out family target is on R@10 (``--metric``); a view the eval.json lacks is a one-line
    error (exit 2) that lists the views it has."""
    import json

    from altclip.cli import ablation_table, main

    def res(r1, r10):
        return {"languages": {lang: {"t2i": {"R@1": r1, "R@10": r10}} for lang in ("en", "zh")}}

    rows = {"stage 1": res(0.1, 0.3), "stage 2": res(0.2, 0.6), "scratch": res(0.1, 0.4)}
    table, checks = ablation_table(res(0.3, 0.8), rows, ["en", "zh"], "test", "R@10")
    assert table.splitlines()[0].startswith("| test t2i R@10 |")
    assert checks["teacher_en"] == 0.8 and checks["margin_over_last"] == pytest.approx(0.2)
    for name, r in [("teacher", res(0.3, 0.8)), ("s2", res(0.2, 0.6))]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"closed": r}))
    argv = ["ablation", "--teacher", str(tmp_path / "teacher"), "--rows", f"a={tmp_path / 's2'}",
            f"b={tmp_path / 's2'}", "--langs", "en", "zh"]
    assert main(argv + ["--metric", "R@10"]) == 0
    assert "English R@10 0.800" in capsys.readouterr().out
    assert main(argv + ["--view", "test+style:openmoji"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("has no view 'test+style:openmoji'; it has: closed") and "Traceback" not in err


def test_row_names_and_folders_may_hold_an_equals_sign(tmp_path):
    """``NAME=FOLDER`` rows (ablation, compare, views): the split keeps an existing folder whole, whether the
    ``=`` is in the name ("K=1024") or in the folder (a run's ``best-step=300``)."""
    from brivl.cli import named_folder

    folder = tmp_path / "export" / "best-step=300"
    folder.mkdir(parents=True)
    assert named_folder(f"stage 1={folder}") == ("stage 1", str(folder))
    assert named_folder(f"K=1024, m=0.99={tmp_path}") == ("K=1024, m=0.99", str(tmp_path))
    assert named_folder(str(folder)) == (str(folder), str(folder))  # a bare folder names itself
    assert named_folder("a=no/such/folder") == ("a", "no/such/folder")  # nothing exists: the first "=", and the
    # command's "eval.json missing" error names the folder
