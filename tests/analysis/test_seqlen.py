"""The long-sequence criterion (L > 6D) and the `mambaout seqlen` command."""
import json

import pytest

from mambaout import cli
from mambaout.analysis import seqlen
from mambaout.errors import MambaOutError


def _row(name, **kw):
    return seqlen.analyse(seqlen.settings_for([name], **kw)[0])


# ---- the paper's numbers ---------------------------------------------------------------------

def test_vit_s_threshold_is_2304():
    assert seqlen.threshold(384) == 2304
    assert _row("imagenet-224")["threshold"] == 2304


def test_imagenet_224_has_196_tokens_and_is_short():
    r = _row("imagenet-224")
    assert (r["height"], r["width"], r["stride"], r["dim"]) == (224, 224, 16, 384)
    assert r["tokens"] == 196
    assert not r["long_sequence"] and r["verdict"] == seqlen.SHORT
    assert r["ratio"] < 0.1


@pytest.mark.parametrize("name,tokens", [("coco-800x1333", 4150), ("ade20k-512x2048", 4096)])
def test_detection_and_segmentation_are_about_4k_tokens_and_long(name, tokens):
    r = _row(name)
    assert r["tokens"] == tokens
    assert 3500 <= r["tokens"] <= 4500
    assert r["long_sequence"] and r["verdict"] == seqlen.LONG
    assert r["ratio"] > 1


def test_video_presets():
    assert _row("kinetics-16x224")["tokens"] == 16 * 196  # 1x16x16 patches
    assert _row("kinetics-16x224")["long_sequence"]
    assert _row("kinetics-16x224-t2")["tokens"] == 8 * 196  # 2x16x16 tubelets
    assert not _row("kinetics-16x224-t2")["long_sequence"]


def test_ssv2_presets_are_table_10s_clips():
    """8 frames of 196 tokens: 1,568 > 6 x 192 for VideoMamba-Ti and Femto's stage 3 (long, the
    SSM's side of Hypothesis 2); Femto's stage 4 (392 tokens, D=288) stays short."""
    for name in ("ssv2-8x224-videomamba-ti", "ssv2-8x224-femto-s3"):
        r = _row(name)
        assert (r["tokens"], r["dim"], r["long_sequence"]) == (8 * 196, 192, True)
    r = _row("ssv2-8x224-femto-s4")
    assert (r["tokens"], r["long_sequence"]) == (8 * 49, False)


# ---- the formulas ------------------------------------------------------------------------------

@pytest.mark.parametrize("L,D", [(1, 1), (196, 384), (4150, 384), (3136, 96), (777, 1024)])
def test_flop_formulas_and_ratio(L, D):
    lin, quad = seqlen.block_flops(L, D)
    assert lin == 24 * D * D * L
    # 12 D^2 multiply-adds per token: qkv 3D^2 + proj D^2 + MLP(4x) 8D^2, 2 FLOPs each
    assert lin == 2 * L * (3 * D * D + D * D + 8 * D * D)
    assert quad == 4 * L * L * D == 2 * (L * L * D + L * L * D)  # QK^T and attn x V
    r = seqlen.analyse_image(L, 1, stride=1, dim=D)
    assert r["tokens"] == L
    assert r["ratio"] == pytest.approx(L / (6 * D))
    assert r["total_flops"] == lin + quad


def test_terms_equal_at_threshold():
    for D in (64, 384, 768):
        lin, quad = seqlen.block_flops(6 * D, D)
        assert lin == quad
        assert seqlen.verdict(6 * D, D) == seqlen.EQUAL
        assert seqlen.verdict(6 * D + 1, D) == seqlen.LONG
        assert seqlen.verdict(6 * D - 1, D) == seqlen.SHORT


def test_token_count_floors_like_a_patch_embedding():
    assert seqlen.count_tokens(800, 1333, 16) == 50 * 83
    assert seqlen.count_tokens(230, 239, 16) == 14 * 14
    assert seqlen.count_tokens(224, 224, 16, frames=9, tubelet=2) == 4 * 196
    assert seqlen.parse_img_size("800x1333") == (800, 1333)
    assert seqlen.parse_img_size("224") == (224, 224)
    assert seqlen.parse_img_size(" 512 X 2048 ") == (512, 2048)


def test_dim_and_stride_override_a_preset():
    r = _row("imagenet-224", dim=768, stride=8)
    assert (r["dim"], r["stride"], r["tokens"], r["threshold"]) == (768, 8, 28 * 28, 4608)
    r = _row("coco-800x1333", dim=768)  # ViT-B: 4150 < 4608, no longer long
    assert not r["long_sequence"]


def test_all_presets():
    names = [s.name for s in seqlen.settings_for(["all"])]
    assert names == seqlen.preset_names()
    assert {"imagenet-224", "coco-800x1333", "ade20k-512x2048"} <= set(names)
    assert [s.name for s in seqlen.settings_for(None)] == names  # neither presets nor size: all
    assert [s.name for s in seqlen.settings_for(["coco-800x1333,imagenet-224", "coco-800x1333"])] == \
        ["coco-800x1333", "imagenet-224"]


# ---- the command -------------------------------------------------------------------------------

def test_cli_table(capsys):
    assert cli.main(["seqlen", "--preset", "all"]) == 0
    out = capsys.readouterr().out
    for name in seqlen.preset_names():
        assert name in out
    line = next(l for l in out.splitlines() if l.startswith("imagenet-224"))
    assert " 196 " in line and "2304" in line and seqlen.SHORT in line
    line = next(l for l in out.splitlines() if l.startswith("coco-800x1333"))
    assert "4150" in line and seqlen.LONG in line


def test_cli_custom_video(capsys):
    assert cli.main(["seqlen", "--img-size", "224", "--stride", "16", "--dim", "192",
                     "--frames", "8", "--tubelet", "2", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert (r["name"], r["tokens"], r["threshold"], r["frames"], r["tubelet"]) == ("custom", 784, 1152, 8, 2)


def test_cli_json_parses(capsys):
    assert cli.main(["seqlen", "--preset", "imagenet-224", "--preset", "ade20k-512x2048", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["imagenet-224", "ade20k-512x2048"]
    assert rows[0]["tokens"] == 196 and rows[1]["tokens"] == 4096
    assert rows[1]["long_sequence"] is True and rows[0]["long_sequence"] is False
    for r in rows:
        assert r["linear_flops"] == 24 * r["dim"] ** 2 * r["tokens"]
        assert r["quadratic_flops"] == 4 * r["tokens"] ** 2 * r["dim"]


def test_cli_writes_png(tmp_path, capsys):
    path = tmp_path / "sub" / "seqlen.png"
    assert cli.main(["seqlen", "--preset", "all", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--preset", "nope"], "known presets: imagenet-224"),
    (["--img-size", "224x"], "--img-size"),
    (["--img-size", "x224"], "--img-size"),
    (["--img-size", "0"], "positive"),
    (["--img-size=-224x224"], "positive"),
    (["--img-size", "224", "--dim", "0"], "positive"),
    (["--img-size", "224", "--stride", "-16"], "positive"),
    (["--img-size", "224", "--stride", "300"], "larger than the image"),
    (["--preset", "imagenet-224", "--stride", "512"], "larger than the image"),
    (["--img-size", "224", "--frames", "2", "--tubelet", "4"], "longer than the clip"),
    (["--preset", "all", "--img-size", "224"], "not both"),
    (["--frames", "8"], "--img-size"),
    (["--dim", "abc"], "invalid int"),
])
def test_cli_bad_input_one_line(argv, needle, capsys):
    assert cli.main(["seqlen", *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert needle in err


def test_cli_unwritable_plot(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["seqlen", "--preset", "imagenet-224", "--plot", str(blocker / "x.png")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mambaout: error: cannot write plot")


def test_library_raises_mambaout_error():
    with pytest.raises(MambaOutError):
        seqlen.get_preset("imagenet")
    with pytest.raises(MambaOutError):
        seqlen.count_tokens(224, 224, 0)
    with pytest.raises(MambaOutError):
        seqlen.block_flops(0, 384)
