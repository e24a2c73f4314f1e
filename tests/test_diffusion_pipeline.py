"""diffusion.pipeline_alt_diffusion: tiny random components with a fixed seed (the diffusers way)."""
import json

import numpy as np
import pytest
import torch

from conftest import REPO

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel  # noqa: E402
from transformers import AltCLIPTextConfig, AltCLIPTextModel, AutoTokenizer  # noqa: E402

from diffusion.pipeline_alt_diffusion import AltDiffusionPipeline  # noqa: E402

TOKENIZER = REPO / "models" / "altclip-emoji"  # the shipped multilingual tokenizer (8000 pieces)
PROMPTS = ["一只猫", "a red heart"]


def tiny_pipeline(vae: bool = False, max_length: int = 12) -> AltDiffusionPipeline:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = AltCLIPTextModel(AltCLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        project_dim=8, max_position_embeddings=40, pad_token_id=tok.pad_token_id)).eval()
    channels = 4 if vae else 3
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(4, 8),
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2).eval()
    autoencoder = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16).eval() if vae else None
    scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=False)
    pipe = AltDiffusionPipeline(text_encoder, tok, unet, scheduler, vae=autoencoder, tokenizer_max_length=max_length)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts=PROMPTS, seed=0, **kw) -> np.ndarray:
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("guidance_scale", 3.0)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompts, generator=gens, output_type="np", **kw).images


@pytest.mark.parametrize("vae", [False, True], ids=["pixels", "latents"])
def test_generation_is_seeded_and_follows_the_prompt(vae):
    pipe = tiny_pipeline(vae)
    a, b = generate(pipe), generate(pipe)
    side = 16 if vae else 8  # the UNet's sample_size 8, times the VAE's 2x
    assert pipe.default_size == side and a.shape == (2, side, side, 3) and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b)
    assert not np.allclose(a, generate(pipe, seed=5), atol=1e-3)  # other noise
    other = generate(pipe, ["кошка", "a red heart"])
    assert not np.allclose(other[0], a[0], atol=1e-4) and np.allclose(other[1], a[1], atol=1e-6)
    pil = pipe("一只猫", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (side, side)


def test_padding_never_changes_the_image():
    """The mask reaches the text tower and the UNet's cross-attention: padding to 12 or to 24 tokens gives
    the same image (it would not if the UNet attended to the pad states)."""
    short, long = generate(tiny_pipeline(max_length=12)), generate(tiny_pipeline(max_length=24))
    assert np.allclose(short, long, atol=1e-5)
    pipe = tiny_pipeline(max_length=24)
    uneven = ["猫", "a red heart on a white background"]  # the short one is padded to the long one's length
    states, mask = pipe.encode_prompt(uneven, "cpu", do_classifier_free_guidance=False)
    assert states.shape[1] == mask.shape[1] < 24 and not mask.bool().all()  # all-pad columns are trimmed
    unmasked = pipe.unet(torch.zeros(2, 3, 8, 8), 5, encoder_hidden_states=states).sample
    masked = pipe.unet(torch.zeros(2, 3, 8, 8), 5, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    assert not torch.allclose(unmasked, masked, atol=1e-5)  # so the check above can fail


def test_classifier_free_guidance():
    """uncond + g (cond - uncond): with the prompt itself as the negative prompt that is the plain
    conditional prediction, whatever g; with the empty prompt it is not."""
    pipe = tiny_pipeline()
    plain = generate(pipe, guidance_scale=1.0)
    assert np.allclose(generate(pipe, guidance_scale=6.0, negative_prompt=PROMPTS), plain, atol=1e-5)
    assert not np.allclose(generate(pipe, guidance_scale=6.0), plain, atol=1e-4)
    states, mask = pipe.encode_prompt(PROMPTS, "cpu", num_images_per_prompt=3)
    longest = max(len(ids) for ids in pipe.tokenizer(PROMPTS).input_ids)  # padded to the batch's longest text
    assert states.shape == (12, longest, 8) and mask.shape == (12, longest)  # 2 x (negative + prompt) x 3 images


def test_a_batch_equals_its_prompts_one_by_one():
    pipe = tiny_pipeline()
    both = generate(pipe)
    for i, p in enumerate(PROMPTS):
        one = pipe([p], generator=[torch.Generator().manual_seed(i)], num_inference_steps=3, guidance_scale=3.0,
                   output_type="np").images
        assert np.allclose(one[0], both[i], atol=1e-5)


@pytest.mark.parametrize("vae", [False, True], ids=["pixels", "latents"])
def test_save_pretrained_round_trip(tmp_path, vae):
    pipe = tiny_pipeline(vae)
    want = generate(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["tokenizer_max_length"] == 12 and index["text_encoder"] == ["transformers", "AltCLIPTextModel"]
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    back = AltDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    back.set_progress_bar_config(disable=True)
    assert (back.vae is None) == (not vae)
    assert np.allclose(generate(back), want, atol=1e-6)


def test_schedulers_swap_by_config():
    pipe = tiny_pipeline()
    ddim = generate(pipe, num_inference_steps=4)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    dpm = generate(pipe, num_inference_steps=4)
    assert np.isfinite(dpm).all() and not np.allclose(dpm, ddim, atol=1e-4)


def test_bad_input_says_what_is_wrong():
    pipe = tiny_pipeline()
    cases = [(dict(prompt=[]), "non-empty list"),
             (dict(prompt="cat", height=13), "multiple of 2"), (dict(prompt="cat", num_inference_steps=0), ">= 1"),
             (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt"),
             (dict(prompt="cat", output_type="jpg"), "output_type"),
             (dict(prompt=["a", "b"], generator=[torch.Generator()]), "one per image")]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            pipe(**{"num_inference_steps": 1, **kw})
    wide = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(4, 8), norm_num_groups=4, cross_attention_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    with pytest.raises(ValueError, match="cross-attends to 16-d"):
        AltDiffusionPipeline(pipe.text_encoder, pipe.tokenizer, wide, pipe.scheduler)
    with pytest.raises(ValueError, match="takes 3 channels"):
        AltDiffusionPipeline(pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler,
                             vae=tiny_pipeline(vae=True).vae)


def test_empty_prompt_is_unconditional_and_long_prompts_are_truncated_with_a_warning(caplog):
    pipe = tiny_pipeline()
    empty = generate(pipe, prompts=[""], guidance_scale=1.0)
    # with guidance, uncond + g (cond - uncond) = cond when the prompt is the (default) empty negative prompt
    assert np.allclose(empty, generate(pipe, prompts=[""], guidance_scale=5.0), atol=1e-5)
    assert not np.allclose(empty, generate(pipe, prompts=["猫"], guidance_scale=1.0), atol=1e-3)
    long = " ".join(["猫"] * 40)
    caplog.clear()
    from diffusers.utils import logging as dlogging

    dlogging.enable_propagation()
    try:
        got = generate(pipe, prompts=[long])
    finally:
        dlogging.disable_propagation()
    assert got.shape == (1, 8, 8, 3) and "truncated to 12" in caplog.text
    caplog.clear()
    generate(pipe, prompts=["猫"])
    assert "truncated" not in caplog.text


def test_scheduler_names():
    from diffusion.model import SCHEDULERS, set_scheduler

    pipe = tiny_pipeline()
    for name in SCHEDULERS:
        set_scheduler(pipe, name)
        assert np.isfinite(generate(pipe, num_inference_steps=2)).all()
    assert type(set_scheduler(pipe, "dpm++").scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="unknown scheduler 'heun': choose one of ddim, dpm\\+\\+"):
        set_scheduler(pipe, "heun")


@pytest.mark.parametrize("name", ["ddpm", "dpm++sde"])
def test_stochastic_samplers_draw_step_noise_from_each_images_generator(name):
    """An image depends on its own seed only: made alone or second in a batch, it is the same image."""
    from diffusion.model import set_scheduler

    pipe = set_scheduler(tiny_pipeline(), name)
    pair = generate(pipe, prompts=PROMPTS[:2], seed=0, num_inference_steps=4)  # seeds 0, 1
    alone = generate(pipe, prompts=PROMPTS[1:2], seed=1, num_inference_steps=4)
    assert np.allclose(pair[1], alone[0], atol=1e-5)
    torch.manual_seed(123)  # the global RNG plays no part
    assert np.allclose(generate(pipe, prompts=PROMPTS[1:2], seed=1, num_inference_steps=4), alone, atol=1e-5)


def test_few_step_samplers_start_at_the_last_training_timestep():
    from diffusion.model import set_scheduler

    pipe = tiny_pipeline()
    for name in ("ddim", "dpm++", "dpm++sde"):
        sched = set_scheduler(pipe, name).scheduler
        sched.set_timesteps(4)
        assert int(sched.timesteps[0]) == sched.config.num_train_timesteps - 1, name
    # DDIM keeps the noise of the unclipped x0, so it must not clip (the training config clips, for DDPM)
    pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, clip_sample=True)
    assert set_scheduler(pipe, "ddim").scheduler.config.clip_sample is False


def test_pooled_text_vector_reaches_a_projection_unet():
    """A UNet built with class_embed_type="projection" gets states[:, 0] in training and sampling alike
    (denoiser_inputs); a plain UNet gets no class labels."""
    from diffusion.pipeline_alt_diffusion import denoiser_inputs

    pipe = tiny_pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
        class_embed_type="projection", projection_class_embeddings_input_dim=8).eval()
    states, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    kw = denoiser_inputs(unet, states, mask)
    assert torch.equal(kw["class_labels"], states[:, 0]) and "class_labels" not in denoiser_inputs(pipe.unet, states, mask)
    pooled = AltDiffusionPipeline(pipe.text_encoder, pipe.tokenizer, unet, pipe.scheduler, tokenizer_max_length=12)
    pooled.set_progress_bar_config(disable=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = unet(x, 5, **kw).sample
        b = unet(x, 5, **{**kw, "class_labels": torch.zeros(2, 8)}).sample
    assert not torch.allclose(a, b)
    assert generate(pooled).shape == (2, 8, 8, 3)


def test_reads_the_released_altdiffusion_layout_and_matches_diffusers(tmp_path):
    """A tiny checkpoint in BAAI/AltDiffusion's layout (written by diffusers' own deprecated pipeline: the
    text encoder declared as RobertaSeriesModelWithTransformation, a safety-checker slot) loads with our
    from_pretrained, which current diffusers cannot do by itself; on a prompt without padding and without
    guidance (where masking changes nothing) it gives diffusers' images."""
    import warnings

    from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline as DiffusersAltDiffusion
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig, RobertaSeriesModelWithTransformation)
    from transformers import XLMRobertaTokenizerFast

    tiny = tiny_pipeline(vae=True)
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"))
    torch.manual_seed(1)
    text_encoder = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        project_dim=8, max_position_embeddings=90, pad_token_id=tok.pad_token_id)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DiffusersAltDiffusion(vae=tiny.vae, text_encoder=text_encoder, tokenizer=tok, unet=tiny.unet,
                                    scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
        ref.set_progress_bar_config(disable=True)
        ref.save_pretrained(tmp_path / "released")
        index = json.loads((tmp_path / "released" / "model_index.json").read_text())
        assert index["text_encoder"][-1] == "RobertaSeriesModelWithTransformation" and "safety_checker" in index
        with pytest.raises(ValueError, match="RobertaSeriesModelWithTransformation"):
            diffusers.DiffusionPipeline.from_pretrained(tmp_path / "released")  # why the override exists
        ours = AltDiffusionPipeline.from_pretrained(tmp_path / "released")
        ours.set_progress_bar_config(disable=True)
        assert type(ours.text_encoder).__name__ == "RobertaSeriesModelWithTransformation"
        assert ours.config.tokenizer_max_length == 77
        prompt = "一只猫"
        n = len(tok(prompt).input_ids)  # pad to exactly the prompt: no padding on either side
        ref.tokenizer.model_max_length = n
        ours.register_to_config(tokenizer_max_length=n)
        want = ref(prompt, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
        got = ours(prompt, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    assert got.shape == want.shape == (1, 16, 16, 3)
    assert np.allclose(got, want, atol=1e-5)


def test_shipped_altdiffusion_model_loads_and_generates():
    folder = REPO / "models" / "altdiffusion-emoji"
    pipe = AltDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae is None and pipe.unet.config.cross_attention_dim == 128 and pipe.config.tokenizer_max_length == 24
    assert pipe.unet.config.class_embed_type == "projection" and pipe.scheduler.config.prediction_type == "v_prediction"
    a = pipe("桜", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = pipe("桜", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert a.shape == (1, 32, 32, 3) and np.isfinite(a).all() and np.array_equal(a, b)
    ev = json.loads((folder / "eval.json").read_text())
    assert set(ev) == {"train", "test", "val_sweep"}
    for split in ("train", "test"):  # the guidance picked on val is the one reported
        picked = min(ev["val_sweep"]["by_guidance"].items(),
                     key=lambda kv: sum(r["median_rank"] for r in kv[1]["languages"].values()))[0]
        assert list(ev[split]["by_guidance"]) == [picked] and ev[split]["split"] == split
        run = ev[split]["by_guidance"][picked]
        assert len(run["languages"]) == 9 and run["shuffled_en"]["R@10"] <= 0.05
    assert ev["train"]["by_guidance"][picked]["n_concepts"] == 200
    info = json.loads((folder / "training_state.json").read_text())
    assert info["steps"] == sum(leg["steps"] for leg in info["legs"]) and (folder / "training_state.safetensors").is_file()


def test_cli_guidance_defaults_to_the_scale_picked_on_val(tmp_path):
    from diffusion.cli import picked_guidance

    assert picked_guidance(str(tmp_path)) == 3.0  # no eval.json
    (tmp_path / "eval.json").write_text(json.dumps({"train": {"by_guidance": {"7.5": {}}}}))
    assert picked_guidance(str(tmp_path)) == 7.5
