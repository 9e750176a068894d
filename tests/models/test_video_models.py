"""The video models of Table 10: VideoMamba-Ti and MambaOut-Femto on clips (and its frame-averaging
baseline): sizes in both conventions against the paper, the forward against a re-derivation of
VideoMamba's code, the official and ImageNet checkpoints, the image-to-video initialisation,
temporal sensitivity, timm's interface, names. Full-size models only on the meta device."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mambaout
from mambaout.analysis.complexity import count_macs, measure, round_half_up
from mambaout.errors import MambaOutError
from mambaout.models.mambaout_video import MambaOutVideo, VideoGatedCNNBlock
from mambaout.models.paper_tables import PAPER_TABLES
from mambaout.models.registry import VIDEO_ARCHS, is_video, list_video_models
from mambaout.models.ssm import selective_scan_ref
from mambaout.models.videomamba import VideoMamba, fvcore_macs
from mambaout.models.weights import inflate_kernel
from mambaout.models.weights import fit_state_dict, load_checkpoint
from helpers import FP32_NET_RTOL, assert_fp32_close, randomize, set_fast, timm_to_official

VIDEO = ["videomamba_tiny", "mambaout_femto_video", "mambaout_femto_frames"]
# Tiny versions: 32 px, 4 frames (VideoMamba: 4 x 2 x 2 patches + the class token = 17 tokens).
TINY = {"videomamba_tiny": dict(img_size=32, depth=2, dim=32, num_frames=4),
        "mambaout_femto_video": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_frames=4),
        "mambaout_femto_frames": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_frames=4)}
FEMTO_SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


def tiny(name, seed=0, **kw):
    return randomize(mambaout.create_model(name, **{**TINY[name], **kw}), seed).eval()


def clip(b=2, t=4, size=32, seed=1):
    return torch.randn(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


# ---- sizes: ours and the paper's conventions ---------------------------------------------------

def videomamba_params(D=192, depth=24, patch=16, grid=14, frames=8, N=16, classes=174):
    E, R = 2 * D, math.ceil(D / 16)
    direction = (E * 4 + E) + E * (R + 2 * N) + (R * E + E) + E * N + E   # conv1d, x_proj, dt_proj, A, D
    block = D * 2 * E + 2 * direction + E * D + D
    embeddings = (3 * patch * patch * D + D) + D + (grid * grid + 1) * D + frames * D   # patch conv, cls, pos, temporal
    return embeddings + depth * block + D + D * classes + classes


def test_videomamba_tiny_sizes_in_both_conventions():
    """7.0M params (Table 10: 7M). MACs of one 8 x 224 view: 14.49G in our counter; 8.60G in
    VideoMamba's fvcore count, which its table prints as 9G: x 6 views = Table 10's 54G."""
    m = measure("videomamba_tiny")
    assert m["params"] == videomamba_params() == 6_990_126 and m["params_m"] == 7.0
    assert m["macs"] == 14_488_930_944 and m["views_macs_g"] == 86.9
    assert m["paper_convention_macs"] == fvcore_macs() == 8_597_805_120
    assert (m["num_frames"], m["views"], m["paper_convention_views_macs_g"]) == (8, 6, 51.6)
    assert round_half_up(m["paper_convention_macs"] / 1e9, 0) * m["views"] == 54


def test_fvcore_convention_gives_videomamba_model_zoo_flops():
    """The same count on images (1 frame, 1000 classes) gives the FLOPs of VideoMamba's ImageNet
    model zoo (image_sm/MODEL_ZOO.md): Ti / S / M at 224, 448, 576."""
    zoo = {(192, 24): (1.1, 4.3, 7.1), (384, 24): (4.3, 16.9, 28.0), (576, 32): (12.7, 50.4)}
    for (dim, depth), flops in zoo.items():
        for size, printed in zip((224, 448, 576), flops):
            macs = fvcore_macs(size, 1, depth=depth, dim=dim, num_classes=1000)
            assert round_half_up(macs / 1e9, 1) == printed, (dim, size, macs)


def test_mambaout_video_sizes_and_the_temporal_design():
    """Femto on clips: 6.63M params, 9.71G per view, 58.3G for six (Table 10: 7M, 58G). The
    frame-averaging baseline is the 2D Femto on 8 frames plus one head; kt = 3 in all stages or
    only in stages 3-4 would miss 58G."""
    video, frames = measure("mambaout_femto_video"), measure("mambaout_femto_frames")
    assert (video["params"], video["macs"]) == (6_634_398, 9_713_772_576)
    assert (frames["params"], frames["macs"]) == (6_352_158, 9_238_028_832)
    assert round_half_up(video["params"] / 1e6, 0) == 7 and round_half_up(video["views_macs"] / 1e9, 0) == 58
    assert frames["views_macs_g"] == 55.4
    image = measure("mambaout_femto", num_classes=174)["macs"]
    head = 5 * 288 + 288 * 1152 + 5 * 1152 + 1152 * 174               # norm, fc, norm, fc
    assert frames["macs"] == 8 * image - 7 * head
    assert frames["params"] == measure("mambaout_femto", num_classes=174)["params"]
    # 2 more k x k slices per temporal block: 48 / 96 / 192 / 288 channels at 56 / 28 / 14 / 7
    extra = [2 * 49 * c * s * s * n for c, s, n in zip((48, 96, 192, 288), (56, 28, 14, 7), (3, 3, 9, 3))]
    assert video["macs"] - frames["macs"] == 8 * sum(extra[1:])
    others = {(3, 3, 3, 3): 60.4, (1, 1, 3, 3): 57.2}
    for kernels, g in others.items():
        assert measure("mambaout_femto_video", temporal_kernels=kernels)["views_macs_g"] == g


def test_table10_cites_the_video_variants_with_the_papers_numbers():
    table = next(t for t in PAPER_TABLES if t.key == "table10")
    assert table.models == ("videomamba_tiny", "mambaout_femto_video")
    assert table.numbers == {"videomamba_tiny": (7, 54, 65.1), "mambaout_femto_video": (7, 58, 63.6)}
    for name in table.models:
        v = mambaout.get_variant(name)
        assert (v.num_classes, v.source, v.paper_macs_g) == (174, "Table 10", None)


def test_counter_agrees_with_fvcore_on_mambaout_video():
    fvcore = pytest.importorskip("fvcore.nn")
    model = tiny("mambaout_femto_video")
    x = clip(1)
    theirs = fvcore.FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert count_macs(model, 32) == theirs.total()


def test_fvcore_convention_is_fvcore_on_videomambas_counting_setup():
    """VideoMamba's script: rms_norm=False (LayerNorm, 5 per element), and its Mamba's fused
    function hides all of the mixer but in_proj and out_proj. fvcore on our model set up that
    way, less what the mixers hide, is what fvcore_macs writes out."""
    fvcore = pytest.importorskip("fvcore.nn")
    model = tiny("videomamba_tiny")
    for layer in model.layers:
        layer.norm = nn.LayerNorm(32, eps=1e-5)
    model.norm_f = nn.LayerNorm(32, eps=1e-5)
    count = fvcore.FlopCountAnalysis(model, clip(1)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by = count.by_module()
    hidden = sum(by[f"layers.{i}.mixer"] - by[f"layers.{i}.mixer.in_proj"] - by[f"layers.{i}.mixer.out_proj"]
                 for i in range(2))
    assert count.total() - hidden == model.paper_macs(32) == fvcore_macs(32, 4, depth=2, dim=32)


def test_count_macs_counts_a_clip_of_the_models_length():
    with torch.device("meta"):
        model = mambaout.create_model("mambaout_femto_frames")
    assert count_macs(model, 224, num_frames=16) - count_macs(model, 224) == 8 * (
        measure("mambaout_femto", num_classes=174)["macs"] - (5 * 288 + 288 * 1152 + 5 * 1152 + 1152 * 174))


# ---- forward and training ----------------------------------------------------------------------

@pytest.mark.parametrize("name", VIDEO)
def test_forward_backward_and_other_clip_lengths(name):
    model = mambaout.create_model(name, drop_path_rate=0.1, **TINY[name])
    y = model(clip())
    assert y.shape == (2, 174) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        for t in (1, 3, 8):                        # VideoMamba: its temporal embedding interpolated
            assert model(clip(1, t)).shape == (1, 174)
        if name != "videomamba_tiny":              # any size (VideoMamba: built for one grid, below)
            assert model(clip(1, 4, 48)).shape == (1, 174)


def test_videomamba_other_sizes_and_one_line_errors():
    model = mambaout.create_model("videomamba_tiny", **dict(TINY["videomamba_tiny"], img_size=48)).eval()
    with torch.no_grad():
        assert model(clip(1, 4, 48)).shape == (1, 174)
        with pytest.raises(MambaOutError, match="token grid; this model's position embedding is for 3x3"):
            model(clip(1, 4, 32))
        for m in (model, tiny("mambaout_femto_video")):
            with pytest.raises(MambaOutError, match=r"take[s]? clips \(batch, channels, frames, height, width\)"):
                m(torch.randn(1, 3, 32, 32))
    with pytest.raises(MambaOutError, match="temporal kernel must be odd"):
        mambaout.create_model("mambaout_femto_video", temporal_kernels=(1, 2, 3, 3))


@pytest.mark.parametrize("name", VIDEO)
def test_grad_checkpointing_gives_the_same_loss_and_gradients(name):
    grads = []
    for enable in (False, True):
        model = tiny(name).train()
        model.set_grad_checkpointing(enable)
        model(clip()).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert_fp32_close(a, b)


def _strong_blocks(model):
    """Gated CNN branches about as large as their input, as in a trained model (randomize()'s
    weights leave them ~1e-3 of the residual stream, and so the temporal mixing too)."""
    with torch.no_grad():
        for blk in model.modules():
            if hasattr(blk, "split_indices"):
                blk.fc1.weight.mul_(3), blk.conv.weight.mul_(5), blk.fc2.weight.mul_(10)
    return model


def test_reversing_the_frames_changes_the_video_models_only():
    """Logits of the reversed clip: VideoMamba (its scan order) and MambaOut video (its temporal
    kernels) move by about 1% and 7%, far beyond float32 reordering (FP32_NET_RTOL, 1e-4); the frame
    average does not move, and its frame features are the reversed ones exactly."""
    x = clip()
    with torch.no_grad():
        for name in VIDEO:
            model = tiny(name) if name == "videomamba_tiny" else _strong_blocks(tiny(name))
            a, b = model(x), model(x.flip(2))
            if name == "mambaout_femto_frames":
                assert_fp32_close(b, a)
                assert torch.equal(model.forward_features(x.flip(2)), model.forward_features(x).flip(1))
            else:
                assert (a - b).abs().max() > 10 * FP32_NET_RTOL * a.abs().max(), name


# ---- VideoMamba: the forward of VideoMamba's code ------------------------------------------------

def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def _direction(m, xs, z, sfx, a):
    conv = getattr(m, "conv1d" + sfx)
    L = xs.shape[1]
    u = F.conv1d(xs.transpose(1, 2), conv.weight, conv.bias, padding=3, groups=m.d_inner)[..., :L]   # causal
    u = F.silu(u).transpose(1, 2)
    dt, B, C = (u @ getattr(m, "x_proj" + sfx).weight.t()).split([m.dt_rank, m.d_state, m.d_state], -1)
    dt_proj = getattr(m, "dt_proj" + sfx)
    delta = F.softplus(dt @ dt_proj.weight.t() + dt_proj.bias)
    return selective_scan_ref(u, delta, -torch.exp(getattr(m, a)), B, C, getattr(m, "D" + sfx)) * F.silu(z)


def _mixer_ref(m, x):
    """Its Mamba fork, bimamba: out + out_b.flip (no division by 2), then out_proj."""
    xs, z = (x @ m.in_proj.weight.t()).chunk(2, dim=-1)
    out = _direction(m, xs, z, "", "A_log") + _direction(m, xs.flip(1), z.flip(1), "_b", "A_b_log").flip(1)
    return out @ m.out_proj.weight.t()


def _videomamba_ref(model, x):
    """video_sm/models/videomamba.py VisionMamba.forward (eval), its rearranges written out."""
    x = F.conv3d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=model.patch_embed.proj.stride)
    B, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + model.pos_embed
    cls_tokens, x = x[:B, :1, :], x[:, 1:]
    x = x.reshape(B, T, H * W, C).transpose(1, 2).reshape(B * H * W, T, C)          # (b t) n m -> (b n) t m
    x = x + model.temporal_pos_embedding
    x = x.reshape(B, H * W, T, C).transpose(1, 2).reshape(B, T * H * W, C)          # (b n) t m -> b (t n) m
    hidden, residual = torch.cat((cls_tokens, x), dim=1), None
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = _mixer_ref(layer.mixer, _rms(residual, layer.norm.weight))
    hidden = _rms(residual + hidden, model.norm_f.weight)
    return hidden[:, 0] @ model.head.weight.t() + model.head.bias


@pytest.mark.parametrize("chunk", [0, 3])
def test_videomamba_forward_matches_its_code(chunk):
    model = tiny("videomamba_tiny", chunk=chunk)
    x = clip()
    with torch.no_grad():
        assert_fp32_close(model(x), _videomamba_ref(model, x))


# ---- VideoMamba checkpoints ----------------------------------------------------------------------

def test_videomamba_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = mambaout.create_model("videomamba_tiny").state_dict()
    mix = "layers.0.mixer."
    expected = {"patch_embed.proj.weight": (192, 3, 1, 16, 16), "patch_embed.proj.bias": (192,),
                "cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "temporal_pos_embedding": (1, 8, 192),
                mix + "in_proj.weight": (768, 192), mix + "out_proj.weight": (192, 384),
                "layers.0.norm.weight": (192,), "norm_f.weight": (192,), "head.weight": (174, 192), "head.bias": (174,)}
    for sfx, a in (("", "A_log"), ("_b", "A_b_log")):
        expected.update({mix + f"conv1d{sfx}.weight": (384, 1, 4), mix + f"conv1d{sfx}.bias": (384,),
                         mix + f"x_proj{sfx}.weight": (12 + 32, 384), mix + f"dt_proj{sfx}.weight": (384, 12),
                         mix + f"dt_proj{sfx}.bias": (384,), mix + a: (384, 16), mix + f"D{sfx}": (384,)})
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert len(sd) == 5 + 24 * 17 + 3 and "layers.23.mixer.A_b_log" in sd


@pytest.mark.parametrize("wrapped", [True, False])
def test_videomamba_video_checkpoint_loads_strict(tmp_path, wrapped):
    """videomamba_t16_ssv2_f8_res224.pth's layout: {'model': sd} (or the plain dict)."""
    source = tiny("videomamba_tiny")
    x = clip()
    path = tmp_path / "videomamba_t16_ssv2_f8_res224.pth"
    sd = source.state_dict()
    torch.save({"model": sd, "epoch": 34} if wrapped else sd, path)
    model = mambaout.create_model("videomamba_tiny", checkpoint_path=path, **TINY["videomamba_tiny"]).eval()
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def _image_checkpoint(video: VideoMamba, classes=1000, seed=3) -> dict:
    """An ImageNet VideoMamba checkpoint (image_sm layout) made from a video model's weights: a
    Conv2d patch kernel, no temporal embedding, a 1000-class head."""
    sd = {k: v.clone() for k, v in video.state_dict().items() if k != "temporal_pos_embedding"}
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0]
    g = torch.Generator().manual_seed(seed)
    sd["head.weight"] = 0.02 * torch.randn(classes, video.embed_dim, generator=g)
    sd["head.bias"] = 0.1 * torch.randn(classes, generator=g)
    return sd


def _image_forward(model, sd, img):
    """image_sm/models/videomamba.py VisionMamba.forward on an image, with sd's weights."""
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=model.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1) + sd["pos_embed"]
    hidden, residual = None, x
    for layer in model.layers:
        hidden, residual = layer(hidden, residual)
    hidden = model.norm_f(residual + hidden)
    return hidden[:, 0] @ sd["head.weight"].t() + sd["head.bias"]


def test_videomamba_imagenet_checkpoint_initialises_the_video_model(tmp_path):
    """The image model's weights load (kernel inflated, zero temporal embedding): on a 1-frame
    clip the video model is the image model; with 174 classes the classifier starts anew."""
    sd = _image_checkpoint(tiny("videomamba_tiny"))
    path = tmp_path / "videomamba_t16_in1k_res224.pth"
    torch.save({"model": sd}, path)
    model = mambaout.create_model("videomamba_tiny", checkpoint_path=path, num_classes=1000,
                                  **TINY["videomamba_tiny"]).eval()
    assert torch.equal(model.temporal_pos_embedding, torch.zeros(1, 4, 32))
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(model(img[:, :, None]), _image_forward(model, sd, img))
    video = mambaout.create_model("videomamba_tiny", **TINY["videomamba_tiny"])
    assert fit_state_dict(video, dict(sd))["reinit_classifier"]
    assert torch.equal(video.patch_embed.proj.weight[:, :, 0], sd["patch_embed.proj.weight"])
    tubelet = VideoMamba(img_size=32, depth=1, dim=32, num_frames=4, tubelet_size=3).adapt_state_dict(sd)
    kernel = tubelet["patch_embed.proj.weight"]
    assert kernel.shape == (32, 3, 3, 16, 16) and torch.equal(kernel[:, :, 1], sd["patch_embed.proj.weight"])
    assert not kernel[:, :, [0, 2]].any()


def test_videomamba_embeddings_resampled_for_other_lengths_and_sizes(tmp_path):
    """A checkpoint of 8 frames loads into a 4-frame model (the temporal embedding interpolated
    linearly, as VideoMamba's finetuning does), which equals the 8-frame model run on a 4-frame
    clip (the same interpolation on the fly); a 64 px one into a 32 px model (bicubic, class token first)."""
    source = tiny("videomamba_tiny", num_frames=8)
    path = tmp_path / "f8.pth"
    torch.save(source.state_dict(), path)
    model = mambaout.create_model("videomamba_tiny", checkpoint_path=path, **TINY["videomamba_tiny"]).eval()
    expected = F.interpolate(source.temporal_pos_embedding.detach().transpose(1, 2), size=4, mode="linear",
                             align_corners=False).transpose(1, 2)
    assert torch.equal(model.temporal_pos_embedding, expected)
    x = clip()
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    big = tiny("videomamba_tiny", img_size=64)
    small = VideoMamba(img_size=32, depth=2, dim=32, num_frames=4, num_classes=174)
    fit_state_dict(small, big.state_dict())
    assert torch.equal(small.pos_embed[:, 0], big.pos_embed[:, 0])
    pos = F.interpolate(big.pos_embed[:, 1:].detach().reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(2, 2),
                        mode="bicubic", align_corners=False)
    assert_fp32_close(small.pos_embed[:, 1:], pos.permute(0, 2, 3, 1).reshape(1, 4, 32))


# ---- MambaOut video: the image model's weights ---------------------------------------------------

def _image_femto(classes):
    return randomize(mambaout.create_model("mambaout_femto", num_classes=classes, **FEMTO_SMALL), 5).eval()


@pytest.mark.parametrize("layout", ["timm", "official"])
@pytest.mark.parametrize("name", ["mambaout_femto_video", "mambaout_femto_frames"])
def test_identical_frames_give_the_image_models_logits(tmp_path, name, layout):
    """ImageNet MambaOut-Femto weights (timm's or the official layout) initialise the video model
    (3D kernels inflated): a clip of T identical frames gives the image model's logits."""
    image = _image_femto(1000)
    sd = image.state_dict()
    path = tmp_path / "mambaout_femto.pth"
    torch.save({"model": timm_to_official(sd)} if layout == "official" else sd, path)
    video = mambaout.create_model(name, num_classes=1000, checkpoint_path=path, **FEMTO_SMALL).eval()
    frame = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_fp32_close(video(frame[:, :, None].expand(-1, -1, 4, -1, -1)), image(frame))
    for i, kt in enumerate(video.temporal_kernels):
        conv = video.stages[i].blocks[0].conv
        assert conv.weight.shape[2:] == ((kt, 7, 7) if kt > 1 else (7, 7))


def test_imagenet_weights_into_the_ssv2_model_start_a_new_classifier():
    image = _image_femto(1000)
    video = mambaout.create_model("mambaout_femto_video", **FEMTO_SMALL).eval()
    assert fit_state_dict(video, image.state_dict())["reinit_classifier"]
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = video.forward_head(video.forward_features(frame[:, :, None].expand(-1, -1, 3, -1, -1)),
                                   pre_logits=True)
        assert_fp32_close(feats, image.forward_head(image.forward_features(frame), pre_logits=True))
    w = video.stages[1].blocks[0].conv.weight
    assert torch.equal(w[:, :, 1], image.stages[1].blocks[0].conv.weight) and not w[:, :, [0, 2]].any()


def test_video_checkpoint_round_trip(tmp_path):
    source = tiny("mambaout_femto_video")
    path = tmp_path / "video.pth"
    torch.save({"model": source.state_dict()}, path)
    model = mambaout.create_model("mambaout_femto_video", **TINY["mambaout_femto_video"]).eval()
    load_checkpoint(model, path)
    with torch.no_grad():
        assert torch.equal(model(clip()), source(clip()))


@pytest.mark.parametrize("kt", [1, 3])
def test_stochastic_depth_drops_a_block_for_whole_clips(kt):
    blk = VideoGatedCNNBlock(8, temporal_kernel=kt, drop_path=0.5).train()
    x = torch.randn(64, 4, 5, 5, 8)
    with torch.no_grad():
        kept = (blk(x) - x).flatten(2).abs().amax(-1) > 0          # (clip, frame)
    assert kept.any() and not kept.all() and torch.equal(kept.all(1), kept.any(1))


def test_inflate_kernel_puts_the_2d_kernel_in_the_centre():
    w = torch.randn(4, 1, 7, 7)
    out = inflate_kernel(w, 5)
    assert out.shape == (4, 1, 5, 7, 7) and torch.equal(out[:, :, 2], w) and out.abs().sum() == w.abs().sum()


def test_frame_blocks_take_the_fast_path_and_equal_the_reference():
    model = tiny("mambaout_femto_frames")
    x = clip()
    with torch.no_grad():
        fast = model(x)
        assert_fp32_close(set_fast(model, False)(x), fast)


# ---- timm's interface and the names --------------------------------------------------------------

@pytest.mark.parametrize("name", VIDEO)
def test_timm_interface(name):
    model = tiny(name)
    assert model.get_classifier() is dict(model.named_modules())[model.pretrained_cfg["classifier"]]
    assert isinstance(dict(model.named_modules())[model.pretrained_cfg["first_conv"]], (nn.Conv2d, nn.Conv3d))
    assert model.default_cfg is model.pretrained_cfg
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["num_classes"], cfg["architecture"]) == ((3, 224, 224), 174, name)
    assert "num_frames" not in cfg and model.num_frames == 4
    model.reset_classifier(7)
    assert model(clip()).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(clip()).shape == (2, model.num_features if name == "videomamba_tiny" else model.head_hidden_size)
    decay = model.no_weight_decay()
    assert decay == ({"pos_embed", "cls_token", "temporal_pos_embedding"} if name == "videomamba_tiny" else set())
    names = dict(model.named_parameters())
    assert decay <= names.keys()
    assert set(model.group_matcher()) == {"stem", "blocks"}


def test_names_and_the_video_marker():
    assert list_video_models() == VIDEO and list_video_models("*femto*") == VIDEO[1:]
    assert not set(VIDEO) & set(mambaout.list_models())        # image classification lists stay images
    assert all(is_video(n) for n in VIDEO) and not is_video("mambaout_femto") and not is_video("vim_small")
    assert not is_video("upernet_mambaout_tiny") and set(VIDEO_ARCHS) == {"videomamba", "mambaout_video"}
    with torch.device("meta"):
        model = mambaout.create_model("mambaout_femto_video", num_frames=16)
    assert isinstance(model, MambaOutVideo) and model.num_frames == 16 and model.temporal_kernels == (1, 3, 3, 3)
    assert mambaout.get_variant("videomamba_tiny").drop_path == 0.1
    with pytest.raises(MambaOutError, match="unknown model option"):
        mambaout.create_model("videomamba_tiny", temporal_kernels=(1, 1, 1, 1))


def test_the_temporal_depthwise_conv_equals_nn_conv3d():
    """The block computes its (kt, k, k) depthwise conv as kt shifted 2D convs (fast on CPU):
    the same numbers as nn.Conv3d with the same weights, zero padding in time included."""
    import torch.nn.functional as F
    from mambaout.models.mambaout_video import VideoGatedCNNBlock
    torch.manual_seed(0)
    block = VideoGatedCNNBlock(32, temporal_kernel=3)
    conv = block.conv
    frames = torch.randn(2 * 5, conv.in_channels, 6, 6)                 # B=2, T=5
    ours = block._conv3d_as_2d(frames, 5).unflatten(0, (2, 5)).transpose(1, 2)
    ref = F.conv3d(frames.unflatten(0, (2, 5)).transpose(1, 2), conv.weight, conv.bias, padding=conv.padding,
                   groups=conv.groups)
    assert torch.allclose(ours, ref, atol=1e-5)
