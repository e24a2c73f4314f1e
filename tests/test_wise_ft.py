"""WiSE-FT (brivl/wise_ft.py): the interpolation against its formula written out, and the CLI end to end."""
import json

import pytest
import torch

from brivl.cli import main
from brivl.wise_ft import interpolate


def _pair():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(), "ids": torch.arange(6)}
    b = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(), "ids": torch.arange(6)}
    return a, b


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_interpolate_is_the_weighted_sum_of_the_two_ends(alpha):
    a, b = _pair()
    out = interpolate(a, b, alpha)
    assert torch.allclose(out["w"], (1 - alpha) * a["w"] + alpha * b["w"], atol=1e-6)
    ref_h = ((1 - alpha) * a["h"].double() + alpha * b["h"].double()).half()
    assert out["h"].dtype == torch.float16 and torch.allclose(out["h"].float(), ref_h.float(), atol=1e-3)
    assert torch.equal(out["ids"], a["ids"])
    if alpha in (0.0, 1.0):
        assert torch.equal(out["w"], (a, b)[int(alpha)]["w"])


def test_interpolate_refuses_what_is_not_one_model():
    a, b = _pair()
    with pytest.raises(ValueError, match="outside"):
        interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="only in the second"):
        interpolate(a, {**b, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate(a, {**b, "w": torch.zeros(4, 3)}, 0.5)
    with pytest.raises(ValueError, match="integer buffers"):
        interpolate(a, {**b, "ids": torch.arange(6) + 1}, 0.5)


def test_wise_ft_cli_writes_the_midpoint_with_its_eval(models, emoji_small, tmp_path, capsys):
    from safetensors.torch import load_file

    zero, tuned = models  # two brivl-nano folders, one tokenizer
    out = tmp_path / "wise"
    assert main(["wise-ft", "--zero-shot", str(zero), "--fine-tuned", str(tuned), "--alpha", "0.5",
                 "--out", str(out), "--eval-data", str(emoji_small)]) == 0
    w0, w1, wm = (load_file(str(f / "open_clip_model.safetensors")) for f in (zero, tuned, out))
    for k, v in wm.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.5 * (w0[k] + w1[k]), atol=1e-6), k
    info = json.loads((out / "brivl.json").read_text())
    assert info["wise_ft"] == {"zero_shot": str(zero), "fine_tuned": str(tuned), "alpha": 0.5}
    assert {"closed", "test", "compositional"} <= set(json.loads((out / "eval.json").read_text()))

    capsys.readouterr()
    assert main(["wise-ft", "--zero-shot", str(tmp_path / "nope"), "--fine-tuned", str(tuned), "--alpha", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    other_tok = tmp_path / "other-tok"
    other_tok.mkdir()
    for f in tuned.iterdir():
        (other_tok / f.name).write_bytes(f.read_bytes())
    (other_tok / "tokenizer.json").write_text("{}")
    assert main(["wise-ft", "--zero-shot", str(zero), "--fine-tuned", str(other_tok), "--alpha", "0.5",
                 "--out", str(tmp_path / "y")]) == 2
    assert "different tokenizers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
