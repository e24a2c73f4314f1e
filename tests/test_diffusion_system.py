"""diffusion.system / diffusion.cli: the denoising loss, EMA, caption dropout, the cross-attention-only stage,
and a tiny fit -> export -> generate run through the CLI."""
import json
import math

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO

pytest.importorskip("diffusers")
from diffusion import system as ds  # noqa: E402

TOWER = str(REPO / "models" / "altclip-emoji")


def tiny_system(**kw) -> ds.AltDiffusionSystem:
    torch.manual_seed(0)
    args = dict(text_tower=TOWER, unet="unet-tiny", lr=1e-3, weight_decay=0.0, warmup_steps=2, caption_dropout=0.1,
                ema_decay=0.9, num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    args.update(kw)
    return ds.AltDiffusionSystem(**args)


def test_denoising_loss_is_the_ddpm_epsilon_mse():
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, loss = mean (eps - unet(x_t, t, text))^2, written out."""
    sys_ = tiny_system()
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    eps = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 40, 99])
    texts = ["一只猫", "a red heart", ""]
    got = sys_.denoising_loss(sys_.unet, x0, texts, eps, t)
    abar = sys_.noise_scheduler.alphas_cumprod[t].view(3, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    ids = sys_.tokenizer(texts, padding="max_length", max_length=sys_.context_length, truncation=True,
                         return_tensors="pt")
    states = sys_.text_encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    pred = sys_.unet(xt, t, encoder_hidden_states=states, encoder_attention_mask=ids.attention_mask).sample
    assert got.item() == pytest.approx(((pred - eps) ** 2).mean().item(), rel=1e-5)
    assert states.shape[-1] == sys_.unet.config.cross_attention_dim == 128


def test_ema_update_and_decay_warm_up():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    want = [0.75 * pa.detach() + 0.25 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    ds.update_ema(a, b, 0.75)
    assert all(torch.allclose(p, w) for p, w in zip(a.parameters(), want))
    assert ds.ema_decay_at(0.999, 0) == pytest.approx(0.1) and ds.ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ds.ema_decay_at(0.999, 10**6) == 0.999


def test_caption_dropout_rate():
    sys_ = tiny_system(caption_dropout=0.3)
    dropped = sum(t == "" for t in sys_.drop_captions(["cat"] * 4000))
    assert abs(dropped / 4000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert tiny_system(caption_dropout=0.0).drop_captions(["cat"] * 100) == ["cat"] * 100
    with pytest.raises(ValueError, match="caption_dropout"):
        tiny_system(caption_dropout=1.0)


def test_cross_attention_stage_trains_only_its_keys_and_values():
    sys_ = tiny_system(trainable="cross_attention")
    names = [n for n, p in sys_.unet.named_parameters() if p.requires_grad]
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    assert len(names) == len([n for n, _ in sys_.unet.named_parameters() if ds.is_cross_attention_kv(n)])
    opt = sys_.configure_optimizers()["optimizer"]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for n, p in sys_.unet.named_parameters() if ds.is_cross_attention_kv(n))
    assert not any(p.requires_grad for p in sys_.text_encoder.parameters())
    with pytest.raises(ValueError, match="trainable"):
        tiny_system(trainable="lora")


def test_caption_in_falls_back_to_english():
    meta = {"captions": {"en": ["cat face"], "zh": ["猫脸"]}}
    assert ds.caption_in(meta, "zh") == "猫脸" and ds.caption_in(meta, "ko") == "cat face"


def test_fit_export_generate(tmp_path, emoji_small):
    """4 steps of the real config's shape on the small emoji data, then export the EMA UNet and generate."""
    from diffusion.cli import main
    from diffusion.pipeline_alt_diffusion import AltDiffusionPipeline

    cfg = yaml.safe_load((REPO / "configs" / "altdiffusion-emoji.yaml").read_text())
    cfg["trainer"].update(max_steps=4, val_check_interval=2, log_every_n_steps=1, enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    cfg["model"]["init_args"].update(text_tower=TOWER, unet="unet-tiny", warmup_steps=2, num_train_timesteps=100)
    cfg["data"]["init_args"].update(data_dir=str(emoji_small), train_view="train", batch_size=8, num_workers=0,
                                    shuffle_buffer=50)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    run = tmp_path / "runs" / "altdiffusion-emoji" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    metrics = (run / "metrics.csv").read_text()
    assert "val/loss" in metrics and "train/loss" in metrics
    out = tmp_path / "pipe"
    assert main(["export", "--ckpt", str(ckpt), "--config", str(run / "config.yaml"), "--out", str(out)]) == 0
    pipe = AltDiffusionPipeline.from_pretrained(out)
    ema = {k[len("unet_ema."):]: v for k, v in state["state_dict"].items() if k.startswith("unet_ema.")}
    trained = {k[len("unet."):]: v for k, v in state["state_dict"].items() if k.startswith("unet.")}
    exported = pipe.unet.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in ema.items()) and ema.keys() == exported.keys()
    assert any(not torch.equal(trained[k], ema[k]) for k in ema)  # the EMA, not the raw weights, is shipped
    assert pipe.config.tokenizer_max_length == 24 and pipe.default_size == 16
    grid = tmp_path / "grid.png"
    assert main(["generate", "--model", str(out), "一只猫", "кошка", "--steps", "2", "--per-prompt", "3",
                 "--scale", "2", "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (3 * 32, 2 * 32)
    res = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--judge", str(REPO / "models" / "brivl-emoji"), "--data", str(emoji_small),
                 "--n", "3", "--langs", "en", "zh", "--steps", "2", "--out", str(res)]) == 0
    got = json.loads(res.read_text())
    assert set(got["languages"]) == {"en", "zh"} and got["shuffled_en"]["n"] == 3 and got["split"] == "train"
    assert main(["generate", "--model", str(tmp_path), "cat"]) == 2  # not a pipeline folder: one line, exit 2
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert main(["eval", "--model", str(out), "--n", "0"]) == 2
    assert main(["export", "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x")]) == 2


class _RenderPipe:
    """A stand-in generator that 'draws' the real render of whatever concept a prompt names."""

    def __init__(self, renders: dict):
        self.renders = renders  # prompt -> (3, H, W) in [0, 1]

    def __call__(self, prompts, output_type="pt", **kw):
        from types import SimpleNamespace

        return SimpleNamespace(images=torch.stack([self.renders[p] for p in prompts]))


def test_generation_recall_against_brute_force(emoji_small):
    """With a generator that returns the asked concept's real render, every language finds it at rank 1;
    the shuffled-prompt control (concept i drawn from concept i+1's name) equals a brute-force ranking."""
    from brivl.data.datamodule import load_view, to_batch
    from brivl.model import create_model
    from diffusion.evaluate import format_generation_table, generation_recall, judge_embed, pick_concepts

    judge = create_model(str(REPO / "models" / "brivl-emoji")).eval()
    gallery, _ = load_view(emoji_small, "closed")
    images = to_batch(gallery, judge.image_size, (0.0,) * 3, (1.0,) * 3)
    keys = [s["key"] for s in gallery]
    concepts = pick_concepts(load_view(emoji_small, "train")[0], 12, seed=0)
    assert [c["key"] for c in concepts] == [c["key"] for c in pick_concepts(load_view(emoji_small, "train")[0], 12, 0)]
    by_key = dict(zip(keys, images))
    renders = {c["meta"]["captions"][lang][0]: by_key[c["key"]] for c in concepts for lang in c["meta"]["captions"]}
    res = generation_recall(_RenderPipe(renders), judge, images, keys, concepts, ["en", "zh", "ja"], ks=(1, 5))
    for lang, r in res["languages"].items():
        assert r["R@1"] == 1.0 and r["n"] == sum(1 for c in concepts if c["meta"]["captions"].get(lang))
    emb = judge_embed(judge, images).numpy()
    en = [c for c in concepts if c["meta"]["captions"].get("en")]
    hits, ranks = {1: 0, 5: 0}, []
    for i, c in enumerate(en):
        drawn = emb[keys.index(en[(i + 1) % len(en)]["key"])]
        order = np.argsort(-(emb @ drawn), kind="stable")
        rank = list(order).index(keys.index(c["key"]))
        ranks.append(rank + 1)
        for k in hits:
            hits[k] += rank < k
    assert res["shuffled_en"]["median_rank"] == pytest.approx(float(np.median(ranks)))
    assert all(r["median_rank"] == 1.0 for r in res["languages"].values())
    assert res["shuffled_en"]["R@1"] == pytest.approx(hits[1] / len(en))
    assert res["shuffled_en"]["R@5"] == pytest.approx(hits[5] / len(en))
    assert res["chance"]["R@5"] == pytest.approx(5 / len(keys))
    assert "shuffled" in format_generation_table(res)
