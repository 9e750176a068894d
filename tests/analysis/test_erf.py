"""The effective receptive field (`mambaout erf`, analysis/erf.py) and the isotropic models'
forward_intermediates it runs on."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from helpers import assert_fp32_close
from imagesets import make_folder
from mambaout.analysis import erf
from mambaout.cli import main
from mambaout.errors import MambaOutError
from mambaout.models import create_model

# one intra-op thread: these are small models, and two threads only spin on a shared CPU
pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def replknet_rectangle(data, thresh):
    """RepLKNet's erf/analyze_erf.py get_rectangle, restated: squares of side 2i + 1 for
    i in 1 .. h//2 - 1 around (h//2, w//2), the first whose sum is more than thresh of the total."""
    h, w = data.shape
    for i in range(1, h // 2):
        if data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i].sum() / data.sum() > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


# ---- the method on a model whose answer is known -----------------------------------------------

class OneConv(nn.Module):
    """A 'model' whose last feature map is one 3x3 conv (1 output channel, padding 1)."""

    def __init__(self, weight):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.fill_(100.0)     # the centre stays positive, so its ReLU passes

    def forward_intermediates(self, x, indices=None, intermediates_only=False, **kw):
        return [self.conv(x)]


def test_score_is_positive_part_of_the_gradient_summed_over_channels():
    w = torch.randn(1, 3, 3, 3)
    model = OneConv(w)
    x = torch.randn(2, 3, 9, 9)
    grad, shape = erf.input_grad(model, x)
    assert shape == (1, 9, 9)
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = 2 * w[0].clamp(min=0).sum(0)   # two images, relu(weight) summed over channels
    torch.testing.assert_close(grad, expected)


def test_centre_with_negative_features_gives_no_gradient():
    model = OneConv(torch.randn(1, 3, 3, 3))
    with torch.no_grad():
        model.conv.bias.fill_(-100.0)   # relu(centre) = 0: nothing flows back
    grad, _ = erf.input_grad(model, torch.randn(1, 3, 9, 9))
    assert float(grad.abs().sum()) == 0.0
    assert erf.area_ratios(grad.numpy())["area_ratio_99"] is None


class SqrtConv(OneConv):
    """conv(x) + sqrt(|x|) of channel 0: finite forward, NaN gradient where x is exactly 0."""

    def forward_intermediates(self, x, indices=None, intermediates_only=False, **kw):
        return [self.conv(x) + x[:, :1].abs().sqrt()]


def test_mean_over_images_skips_nan_maps():
    model = SqrtConv(torch.ones(1, 3, 3, 3))
    good = torch.ones(3, 9, 9)
    bad = good.clone()
    bad[0, 4, 4] = 0.0
    assert not torch.isfinite(erf.input_grad(model, bad[None])[0]).all()
    mean, count, shape = erf.erf_map(model, [good, bad, 2 * good])
    assert count == 2 and shape == (1, 9, 9)
    expected = (erf.input_grad(model, good[None])[0] + erf.input_grad(model, 2 * good[None])[0]) / 2
    np.testing.assert_allclose(mean, expected.numpy())
    assert mean[4, 4] == pytest.approx(3 + (0.5 + 0.5 / 2 ** 0.5) / 2) and mean[0, 0] == 0.0


def test_model_without_forward_intermediates_is_one_error():
    with pytest.raises(MambaOutError, match="has no forward_intermediates"):
        erf.erf_map(nn.Conv2d(3, 4, 3), [torch.zeros(3, 8, 8)])


# ---- normalisation and area ratios --------------------------------------------------------------

def test_normalise_is_log10_plus_one_over_max():
    raw = np.array([[0.0, 9.0], [99.0, 999.0]])
    np.testing.assert_allclose(erf.normalise(raw), [[0, 1 / 3], [2 / 3, 1]])
    assert erf.normalise(np.zeros((3, 3))).max() == 0


def test_area_ratios_of_a_point_and_a_uniform_map():
    point = np.zeros((11, 11))
    point[5, 5] = 7.0
    r = erf.area_ratios(point)
    assert (r["side_20"], r["side_99"]) == (3, 3)               # RepLKNet's squares start at 3x3
    assert r["area_ratio_99"] == pytest.approx(9 / 121, abs=1e-6)
    assert r["pixel_fraction_99"] == pytest.approx(1 / 121, abs=1e-6)
    flat = np.full((11, 11), 2.0)
    r = erf.area_ratios(flat)
    # more than half of 121 equal pixels: the 9x9 square (81), or 61 pixels anywhere
    assert r["side_50"] == 9 and r["area_ratio_50"] == pytest.approx(81 / 121, abs=1e-6)
    assert r["pixel_fraction_50"] == pytest.approx(61 / 121, abs=1e-6)
    assert r["area_ratio_99"] == 1.0   # no square smaller than the image holds 99%: the whole image


def test_centred_square_agrees_with_replknet_where_it_answers():
    rng = np.random.default_rng(0)
    checked = 0
    for size in (16, 17, 40):
        yy, xx = np.mgrid[:size, :size] - size // 2
        for spread in (1.5, 4.0, 9.0):
            data = erf.normalise(np.exp(-(yy ** 2 + xx ** 2) / (2 * spread ** 2)) * 50 + rng.random((size, size)))
            for t in (0.2, 0.3, 0.5, 0.99):
                ref = replknet_rectangle(data, t)
                if ref is not None:
                    side, ratio = erf.centred_square(data, t)
                    assert (side, ratio) == (ref[0], pytest.approx(ref[1]))
                    checked += 1
    assert checked > 20


# ---- real models ---------------------------------------------------------------------------------

def test_fresh_mambaout_map_is_finite_nonnegative_and_centred():
    model = create_model("mambaout_femto")
    mean, count, shape = erf.erf_map(model, erf.noise_images(3, 128))
    assert count == 3 and shape == (288, 4, 4) and mean.shape == (128, 128)
    assert np.isfinite(mean).all() and (mean >= 0).all() and mean.max() > 0
    # the centre cell (2, 2) of the stride-32 map sits over pixel 64 (3x3 stride-2 convs, padding 1)
    w = erf.where(mean)
    assert w["centre"] == [64, 64]
    assert np.allclose(w["centroid"], [64, 64], atol=2.0), w
    assert np.abs(np.array(w["peak"]) - 64).max() <= 16, w   # inside the centre cell: a 2-image map is noisy
    ring = np.ones_like(mean, dtype=bool)
    ring[32:97, 32:97] = False
    assert mean[32:97, 32:97].mean() > 3 * mean[ring].mean()


def test_wider_kernel_gives_a_wider_erf_at_random_init():
    ratios = {}
    for k in (3, 11):
        torch.manual_seed(0)
        model = create_model(f"mambaout_tiny_k{k}", depths=(1, 1, 1, 1))
        mean, _, _ = erf.erf_map(model, erf.noise_images(2, 224))
        ratios[k] = erf.area_ratios(mean)
    assert ratios[11]["area_ratio_99"] > 2 * ratios[3]["area_ratio_99"], ratios
    assert ratios[11]["pixel_fraction_99"] > ratios[3]["pixel_fraction_99"], ratios


@pytest.mark.parametrize("name", ["vit_tiny_p16", "vit_tiny_p16_causal", "study_conv_d64", "study_ssm_d64",
                                  "mambaout_s_iso"])
def test_isotropic_forward_intermediates(name):
    model = create_model(name, img_size=64, depth=3).eval()   # 3 layers: enough for indices and stop_early
    x = torch.randn(2, 3, 64, 64)
    patch = 4 if name.startswith("study") else 16
    grid = 64 // patch
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x, indices=[0, -1])
        assert len(inter) == 2 and all(t.shape == (2, model.num_features, grid, grid) for t in inter)
        assert_fp32_close(final, feats)
        last = inter[-1]
        if feats.dim() == 3:      # tokens: the last layer's patch tokens, normalised, are forward_features'
            tokens = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]
            patches = feats[:, :grid * grid] if model.causal and model.cls_token is not None else feats[:, -grid * grid:]
            assert_fp32_close(tokens.flatten(2).transpose(1, 2), patches)
            nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)[-1]
            assert_fp32_close(nlc, last.flatten(2).transpose(1, 2))
        else:                     # NHWC map
            assert_fp32_close(last.permute(0, 2, 3, 1), feats)
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert_fp32_close(early[0], inter[0])
    with pytest.raises(ValueError):
        model.forward_intermediates(x, indices=len(model.blocks) + 1)


def test_vit_intermediates_match_timm():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    model = create_model("vit_tiny_p16", img_size=64).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for norm in (False, True):
            ours = model.forward_intermediates(x, indices=[3, 11], norm=norm, intermediates_only=True)
            theirs = ref.forward_intermediates(x, indices=[3, 11], norm=norm, intermediates_only=True)
            for a, b in zip(ours, theirs):
                assert_fp32_close(a, b)


def test_isotropic_erf_runs_through_forward_intermediates():
    model = create_model("vit_tiny_p16", img_size=64)
    mean, count, shape = erf.erf_map(model, erf.noise_images(2, 64))
    assert shape == (192, 4, 4) and count == 2
    assert np.isfinite(mean).all() and (mean >= 0).all()
    w = erf.where(mean)           # centre token (2, 2) covers pixels 32..47
    assert 32 <= w["peak"][0] < 48 and 32 <= w["peak"][1] < 48, w


# ---- the command ---------------------------------------------------------------------------------

def test_cli_writes_png_npy_json(tmp_path, capsys):
    out = tmp_path / "erf"
    code, stdout, err = run(capsys, "erf", "mambaout_femto", "vit_tiny_p16", "-n", "2", "--img-size", "64",
                            "-o", str(out), "--json", "--device", "cpu")
    assert code == 0, err
    assert "random-noise" in err and "image 2/2" in err
    res = json.loads(stdout)
    assert list(res) == ["mambaout_femto", "vit_tiny_p16"]
    for label, r in res.items():
        for key in ("area_ratio_20", "area_ratio_50", "area_ratio_99"):
            assert 0 < r[key] <= 1
        assert r["area_ratio_20"] <= r["area_ratio_50"] <= r["area_ratio_99"]
        assert r["images"] == 2 and r["data"] == "noise"
        saved = np.load(r["npy"])
        assert saved.shape == (64, 64) and np.isfinite(saved).all()
        assert r == {**erf.area_ratios(saved), **{k: v for k, v in r.items() if not k.startswith(
            ("area_ratio", "side", "pixel_fraction"))}}
    png = out / "erf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "erf.json").read_text()) == res
    code, stdout, _ = run(capsys, "erf", "mambaout_femto", "-n", "1", "--img-size", "64", "-o", str(out))
    assert code == 0 and "mambaout_femto" in stdout and "erf.png" in stdout


def test_image_paths_flat_and_class_folders(tmp_path):
    data = make_folder(tmp_path / "imgs", per_class=(1, 0), size=24)
    paths = erf.image_paths(data)
    assert [p.relative_to(data).as_posix() for p in paths] == ["train/blue/000.png", "train/green/000.png",
                                                               "train/red/000.png"]
    assert erf.image_paths(data / "train" / "red") == [data / "train" / "red" / "000.png"]


def test_cli_flat_folder_with_bad_image_and_checkpoints(tmp_path, capsys, caplog):
    data = tmp_path / "flat"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(data / name)
    (data / "b.png").write_bytes(b"not an image")
    model = create_model("mambaout_femto")
    ckpt = tmp_path / "femto.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "erf"
    with caplog.at_level("WARNING", logger="mambaout"):   # the CLI's log lines (stderr outside pytest)
        code, stdout, err = run(capsys, "erf", "mambaout_femto", "mambaout_femto", "--checkpoint", str(ckpt),
                                "--checkpoint", str(ckpt), "--data", str(data), "-n", "3", "--img-size", "64",
                                "-o", str(out), "--json")
    assert code == 0, err
    assert "skipping unreadable image" in caplog.text and "b.png" in caplog.text
    assert "only 2 readable" in caplog.text
    res = json.loads(stdout)
    assert list(res) == ["mambaout_femto@femto", "mambaout_femto@femto#2"]
    a, b = (np.load(r["npy"]) for r in res.values())
    np.testing.assert_array_equal(a, b)          # the same weights and images: the same map
    assert all(r["images"] == 2 and r["checkpoint"] == str(ckpt) for r in res.values())
    # the same map from the library, with the weights in-process and the library's eval transform
    from mambaout.data import eval_transform, load_image
    tf = eval_transform(64, crop_pct=1.0)
    mean, _, _ = erf.erf_map(model, [tf(load_image(data / n)) for n in ("a.png", "c.jpg")])
    np.testing.assert_allclose(a, mean, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("argv,needle", [
    (["nosuchmodel"], "nosuchmodel"),
    (["mambaout_femto", "mambaout_femto", "--checkpoint", "x.pth"], "1 --checkpoint for 2 models"),
    (["mambaout_femto", "--checkpoint", "missing.pth"], "checkpoint not found"),
    (["mambaout_femto", "--data", "no/such/dir"], "data folder not found"),
    (["mambaout_femto", "-n", "0"], "-n must be a positive"),
    (["mambaout_femto", "--img-size", "2"], "--img-size must be at least"),
    (["vit_tiny_p16", "--img-size", "70"], "not divisible"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, needle):
    # the case's own flags come last and win over these defaults
    code, stdout, err = run(capsys, "erf", "-o", str(tmp_path / "o"), "-n", "1", "--img-size", "64", *argv)
    assert code == 2
    assert needle in one_error_line(err)
    assert stdout == ""


def test_cli_empty_folder_and_model_without_intermediates(tmp_path, capsys, caplog, monkeypatch):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images here")
    code, _, err = run(capsys, "erf", "mambaout_femto", "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert code == 2 and "no images found" in one_error_line(err)
    (tmp_path / "empty" / "cls" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level("WARNING", logger="mambaout"):
        code, _, err = run(capsys, "erf", "mambaout_femto", "--data", str(tmp_path / "empty"), "-n", "1",
                           "--img-size", "32", "-o", str(tmp_path / "o"))
    assert code == 2 and "none of the 1 image file(s) could be read" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and "broken.png" in caplog.text
    import mambaout.models
    monkeypatch.setattr(mambaout.models, "create_model", lambda *a, **k: nn.Conv2d(3, 8, 3))
    code, _, err = run(capsys, "erf", "mambaout_femto", "-n", "1", "--img-size", "32", "-o", str(tmp_path / "o"))
    assert code == 2 and "has no forward_intermediates" in one_error_line(err)
