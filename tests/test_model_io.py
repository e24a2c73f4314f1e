"""Model factory, folder round-trip, clear errors, tokenizer conventions, the momentum-queue loss."""
import json
import logging
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from brivl.losses import MomentumEncoder, MomentumQueueLoss
from brivl.factory import create_model, register_model_configs
from brivl.model import ConfigMismatchError, UnknownModelError, load_weights
from brivl.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TextTokenizer, train_tokenizer
from conftest import REPO

TEXTS = ["cat face", "chat", "猫", "кошка", "dog", "chien", "犬", "собака", "red heart", "cœur rouge", "赤いハート",
         "빨간 하트", "قلب أحمر", "cuore rosso", "corazón rojo", "sun", "soleil", "太阳", "солнце"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=120)


def test_tokenizer_conventions(tok_dir, tmp_path):
    tok = TextTokenizer(tok_dir, context_length=8)
    assert [tok.hf.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [PAD_ID, BOS_ID, EOS_ID,
                                                                                            UNK_ID]
    ids = tok(["chat", "cuore rosso corazón rojo cœur rouge red heart"])
    assert ids.shape == (2, 8)
    n = int((ids[0] != PAD_ID).sum())
    assert ids[0, 0] == BOS_ID and ids[0, n - 1] == EOS_ID and (ids[0, n:] == PAD_ID).all()
    assert ids[1, -1] == EOS_ID and (ids[1] != PAD_ID).all()  # truncated, </s> kept last
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TextTokenizer(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="distinct characters"):
        train_tokenizer(TEXTS, tmp_path / "small", vocab_size=20)


def test_create_save_load_roundtrip(tok_dir, tmp_path):
    torch.manual_seed(0)
    model = create_model("brivl-nano", tokenizer=str(tok_dir)).eval()
    images = torch.randn(3, 3, model.image_size, model.image_size)
    t, i = model.embed_texts(TEXTS[:4]), model.embed_images(images)
    assert t.shape == (4, model.embed_dim) and i.shape == (3, model.embed_dim)
    assert torch.allclose(t.norm(dim=-1), torch.ones(4), atol=1e-5)
    folder = model.save_pretrained(tmp_path / "m")
    assert {"open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json", "brivl.json"} <= {
        p.name for p in folder.iterdir()}
    again = create_model(str(folder)).eval()
    assert torch.equal(again.embed_texts(TEXTS[:4]), t) and torch.equal(again.embed_images(images), i)
    model.save_pretrained(folder)  # overwrite in place (atomic swap), still loadable
    assert torch.equal(create_model(str(folder)).eval().embed_texts(TEXTS[:4]), t)


def test_loading_a_folder_does_not_warn_about_random_weights(tok_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        folder = create_model("brivl-nano", tokenizer=str(tok_dir)).save_pretrained(tmp_path / "m")
    assert any("No pretrained weights" in r.getMessage() for r in caplog.records)  # a config name: true, kept
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_model(str(folder))
        create_model(str(REPO / "models" / "brivl-emoji"))
    assert not [r.getMessage() for r in caplog.records if "No pretrained weights" in r.getMessage()]


def test_mismatched_weights_raise_a_clear_error(tok_dir, tmp_path):
    folder = create_model("brivl-nano", tokenizer=str(tok_dir)).save_pretrained(tmp_path / "m")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["width"] = 48
    (other / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigMismatchError, match="another model config"):
        create_model(str(other))
    small = create_model("brivl-tiny", tokenizer=str(tok_dir)).clip
    with pytest.raises(ConfigMismatchError, match="shape mismatch"):
        load_weights(small, folder / "open_clip_model.safetensors")


def test_unknown_names_and_vocab_overflow(tok_dir, tmp_path):
    with pytest.raises(UnknownModelError, match="brivl-tiny"):
        create_model("no-such-model")
    cfg = json.loads((register_model_configs.__globals__["CONFIG_DIR"] / "brivl-nano.json").read_text())
    cfg["text_cfg"]["vocab_size"] = 50
    (tmp_path / "brivl-vocab50.json").write_text(json.dumps(cfg))
    register_model_configs(tmp_path)
    with pytest.raises(ConfigMismatchError, match="vocab_size"):
        create_model("brivl-vocab50", tokenizer=str(tok_dir))


def test_registered_name_with_local_pretrained_file(tok_dir, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = create_model("brivl-nano", tokenizer=str(tok_dir))
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, tmp_path / "w.safetensors")
    torch.manual_seed(2)
    loaded = create_model("brivl-nano", pretrained=str(tmp_path / "w.safetensors"), tokenizer=str(tok_dir))
    for k, v in src.clip.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[k], v), k


def test_hugging_face_text_tower(tok_dir, tmp_path):
    from transformers import XLMRobertaConfig

    tok = TextTokenizer(tok_dir, 16)
    hf = tmp_path / "xlmr-tiny"
    XLMRobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, pad_token_id=PAD_ID).save_pretrained(hf)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 4},
           "text_cfg": {"hf_model_name": str(hf), "hf_tokenizer_name": str(tok_dir), "hf_model_pretrained": False,
                        "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 16}}
    (tmp_path / "brivl-hf-tiny.json").write_text(json.dumps(cfg))
    register_model_configs(tmp_path)
    model = create_model("brivl-hf-tiny").eval()
    emb = model.embed_texts(["猫", "chat", "кошка"])
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    folder = model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(hf)  # the folder carries the text tower's config itself
    assert torch.equal(create_model(str(folder)).eval().embed_texts(["猫", "chat", "кошка"]), emb)


def _ref_infonce(q, k, queue, filled, t):
    losses = []
    for i in range(len(q)):
        logits = [float(q[i] @ k[i])] + [float(q[i] @ queue[j]) for j in range(filled)]
        logits = torch.tensor(logits) / t
        losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_momentum_queue_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    loss_fn = MomentumQueueLoss(embed_dim=6, queue_size=8, temperature=0.07)
    q_img, q_txt, k_img, k_txt = unit(4, 6), unit(4, 6), unit(4, 6), unit(4, 6)
    # empty queue: only the positive is left in the softmax -> loss 0; the keys are then enqueued
    assert loss_fn(q_img, q_txt, k_img, k_txt).item() == pytest.approx(0.0, abs=1e-6)
    assert int(loss_fn.filled) == 4 and int(loss_fn.ptr) == 4
    assert torch.equal(loss_fn.image_queue[:4], k_img) and torch.equal(loss_fn.text_queue[:4], k_txt)
    q2, t2, ki2, kt2 = unit(4, 6), unit(4, 6), unit(4, 6), unit(4, 6)
    iq, tq = loss_fn.image_queue.clone(), loss_fn.text_queue.clone()
    ref = (_ref_infonce(q2, kt2, tq, 4, 0.07) + _ref_infonce(t2, ki2, iq, 4, 0.07)) / 2
    assert loss_fn(q2, t2, ki2, kt2).item() == pytest.approx(ref.item(), rel=1e-5)
    assert int(loss_fn.ptr) == 0 and int(loss_fn.filled) == 8  # the pointer wrapped
    ref_full = (_ref_infonce(q2, kt2, loss_fn.text_queue, 8, 0.07) + _ref_infonce(t2, ki2, loss_fn.image_queue, 8,
                                                                                    0.07)) / 2
    loss_fn.eval()  # no enqueue in eval
    assert loss_fn(q2, t2, ki2, kt2).item() == pytest.approx(ref_full.item(), rel=1e-5)
    assert int(loss_fn.ptr) == 0
    with pytest.raises(ValueError, match="multiple of the global batch"):
        loss_fn.check_batch(3)


def test_momentum_queue_loss_masks_keys_of_the_query_concept():
    """``mask_same_concept``: a queue key with the query's concept label leaves the softmax (reference: the loss
    over the kept columns only); labels are enqueued with their keys."""
    g = torch.Generator().manual_seed(2)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    loss_fn = MomentumQueueLoss(6, 8, temperature=0.07, mask_same_concept=True)
    first, c1 = [unit(4, 6) for _ in range(4)], torch.tensor([10, 11, 12, 13])
    loss_fn(*first, concepts=c1)
    assert torch.equal(loss_fn.concept_queue, torch.tensor([10, 11, 12, 13, -1, -1, -1, -1]))
    q_img, q_txt, k_img, k_txt = [unit(4, 6) for _ in range(4)]
    c2 = torch.tensor([11, 99, 13, 11])  # queries 0 and 3 share concept 11 with queue slot 1; query 2 slot 3
    iq, tq = loss_fn.image_queue.clone(), loss_fn.text_queue.clone()

    def ref(q, k, queue):
        out = []
        for i in range(4):
            keep = [j for j in range(4) if int(c1[j]) != int(c2[i])]
            logits = torch.tensor([float(q[i] @ k[i])] + [float(q[i] @ queue[j]) for j in keep]) / 0.07
            out.append(-(logits[0] - torch.logsumexp(logits, 0)))
        return torch.stack(out).mean()

    expected = (ref(q_img, k_txt, tq) + ref(q_txt, k_img, iq)) / 2
    unmasked = (_ref_infonce(q_img, k_txt, tq, 4, 0.07) + _ref_infonce(q_txt, k_img, iq, 4, 0.07)) / 2
    got = loss_fn(q_img, q_txt, k_img, k_txt, concepts=c2).item()
    assert got == pytest.approx(expected.item(), rel=1e-6) and abs(got - unmasked.item()) > 1e-3
    assert torch.equal(loss_fn.concept_queue[4:], c2)
    with pytest.raises(ValueError, match="needs forward"):
        loss_fn(q_img, q_txt, k_img, k_txt)


def test_momentum_encoder_ema():
    online = torch.nn.Linear(3, 2)
    mom = MomentumEncoder(online, 0.9)
    before = mom.module.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    mom.update(online)
    assert torch.allclose(mom.module.weight, 0.9 * before + 0.1 * online.weight)
    assert not any(p.requires_grad for p in mom.parameters())
    with pytest.raises(ValueError):
        MomentumEncoder(online, 1.0)


def test_momentum_queue_loss_learnable_scale():
    """``logit_scale`` replaces 1 / temperature (the in-batch CLIP way) and receives the gradient."""
    g = torch.Generator().manual_seed(1)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    fixed, learnt = MomentumQueueLoss(6, 8, temperature=0.05), MomentumQueueLoss(6, 8, temperature=0.07)
    first = unit(4, 6), unit(4, 6), unit(4, 6), unit(4, 6)
    fixed(*first), learnt(*first)  # fill half of both queues with the same keys
    q_img, q_txt, k_img, k_txt = unit(4, 6), unit(4, 6), unit(4, 6), unit(4, 6)
    iq, tq = learnt.image_queue.clone(), learnt.text_queue.clone()
    log_scale = torch.tensor(math.log(1 / 0.05), requires_grad=True)
    loss = learnt(q_img, q_txt, k_img, k_txt, log_scale.exp())
    assert loss.item() == pytest.approx(fixed(q_img, q_txt, k_img, k_txt).item(), rel=1e-5)
    ref = (_ref_infonce(q_img, k_txt, tq, 4, 0.05) + _ref_infonce(q_txt, k_img, iq, 4, 0.05)) / 2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs().item() > 0
