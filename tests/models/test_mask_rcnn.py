"""Mask R-CNN on MambaOut: torchvision's interface, the paper's params / FLOPs at 1280x800,
weights in and out, names."""
import pytest
import torch
from torchvision.models.detection import MaskRCNN

import mambaout
from helpers import assert_fp32_close
from mambaout import CheckpointError, MambaOutError, UnknownModelError
from mambaout.analysis.complexity import count_macs, measure
from mambaout.models import DETECTION_VARIANTS, VARIANTS

# Main paper (Mask R-CNN 1x, COCO): params (M), FLOPs (G) at 1280 x 800, box AP, mask AP.
PAPER = {"mask_rcnn_mambaout_tiny": (43, 262, 45.1, 41.0), "mask_rcnn_mambaout_small": (65, 354, 47.4, 42.7),
         "mask_rcnn_mambaout_base": (100, 495, 47.4, 43.0)}
# Exact counts of our convention (mmcv's rules on mmdet's forward_dummy, see complexity.py).
EXACT = {"mask_rcnn_mambaout_tiny": (43_136_533, 262_462_603_700),
         "mask_rcnn_mambaout_small": (65_079_509, 353_713_291_700),
         "mask_rcnn_mambaout_base": (99_708_977, 494_705_483_700)}
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
SMALL = dict(min_size=64, max_size=128, rois_per_image=64, rpn_post_nms_top_n_train=100,
             rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_detections_per_img=10)


def small_model(num_classes=3, **kw):
    return mambaout.create_model("mask_rcnn_mambaout_femto", num_classes=num_classes, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def femto():
    torch.manual_seed(0)
    return small_model()


def target(h, w, boxes, labels):
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = 1
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": masks}


def test_train_mode_returns_the_five_losses_and_backward_works(femto):
    femto.train()
    femto.zero_grad()
    images = [torch.rand(3, 64, 96), torch.rand(3, 70, 53)]
    targets = [target(64, 96, [(5, 6, 40, 50), (50, 10, 90, 60)], [1, 3]), target(70, 53, [(3, 4, 30, 66)], [2])]
    losses = femto(images, targets)
    assert set(losses) == LOSSES
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for module in (femto.backbone.body.stem, femto.backbone.body.stages[3], femto.backbone.fpn, femto.rpn.head,
                   femto.roi_heads.box_head, femto.roi_heads.mask_head, femto.roi_heads.mask_predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_eval_returns_detections_with_masks_at_the_input_size(femto):
    femto.eval()
    sizes = [(64, 96), (57, 41)]
    with torch.no_grad():
        out = femto([torch.rand(3, *s) for s in sizes])
    assert len(out) == 2
    for det, (h, w) in zip(out, sizes):
        assert set(det) == {"boxes", "labels", "scores", "masks"}
        n = len(det["scores"])
        assert 0 < n <= 10                             # random heads still score > 0.05
        assert det["boxes"].shape == (n, 4) and det["masks"].shape == (n, 1, h, w)
        assert det["labels"].dtype == torch.int64 and 1 <= det["labels"].min() and det["labels"].max() <= 3
        assert 0 <= det["masks"].min() and det["masks"].max() <= 1
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()


def test_channels_last_and_odd_sizes(femto):
    model = small_model().to(memory_format=torch.channels_last)
    model.load_state_dict(femto.state_dict())
    model.eval()
    femto.eval()
    images = [torch.rand(1, 3, 67, 101).to(memory_format=torch.channels_last)[0], torch.rand(3, 45, 77)]
    with torch.no_grad():
        a, b = model(images), femto(images)
    for x, y, img in zip(a, b, images):
        assert x["masks"].shape[2:] == y["masks"].shape[2:] == img.shape[1:]
        assert torch.isfinite(x["boxes"]).all() and len(x["boxes"]) == len(x["scores"])
    # channels-last runs other conv kernels (another float order): the FPN maps agree to fp32
    # reordering error; the detections are not compared, since proposals of the random model
    # whose scores are that close may swap ranks (and so which boxes survive NMS and top-k)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for u, v in zip(model.backbone(x.to(memory_format=torch.channels_last)).values(),
                        femto.backbone(x).values()):
            assert_fp32_close(u, v)
    feats = femto.backbone(torch.rand(1, 3, 97, 131))   # FPN maps at ceil(H / s) x ceil(W / s)
    assert {k: tuple(v.shape[2:]) for k, v in feats.items()} == {
        "0": (25, 33), "1": (13, 17), "2": (7, 9), "3": (4, 5), "pool": (2, 3)}
    assert all(v.shape[1] == 256 for v in feats.values())


def test_structure_and_num_classes_counts_categories():
    with torch.device("meta"):
        model = mambaout.create_model("mask_rcnn_mambaout_tiny")
        five = mambaout.create_model("mask_rcnn_mambaout_tiny", num_classes=5, rois_per_image=128,
                                     rpn_post_nms_top_n_train=3000)
    assert isinstance(model, MaskRCNN) and model.variant == "mask_rcnn_mambaout_tiny" and model.in_chans == 3
    for m, n in ((model, 80), (five, 5)):
        rh = m.roi_heads
        assert m.num_classes == n
        assert rh.box_predictor.cls_score.out_features == n + 1 and rh.box_predictor.bbox_pred.out_features == 4 * (n + 1)
        assert rh.mask_predictor.mask_fcn_logits.out_channels == n + 1
    rh, rpn, t = model.roi_heads, model.rpn, model.transform
    assert rh.box_roi_pool.featmap_names == ["0", "1", "2", "3"] and rh.box_roi_pool.output_size == (7, 7)
    assert rh.mask_roi_pool.output_size == (14, 14) and len(rh.mask_head) == 4
    assert rh.box_head.fc6.in_features == 256 * 49 and rh.box_head.fc7.out_features == 1024
    assert model.backbone.body.out_channels == [96, 192, 384, 576] and len(model.backbone.body.out_norms) == 4
    assert (t.min_size, t.max_size) == ((800,), 1333)
    assert t.image_mean == [0.485, 0.456, 0.406] and t.image_std == [0.229, 0.224, 0.225]
    assert rh.fg_bg_sampler.batch_size_per_image == 512 and five.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    assert rpn._post_nms_top_n["training"] == 2000 and rpn._pre_nms_top_n["training"] == 2000
    assert five.rpn._post_nms_top_n["training"] == 3000 and five.rpn._pre_nms_top_n["training"] == 3000
    assert five.roi_heads.detections_per_img == 100
    assert [DETECTION_VARIANTS[f"mask_rcnn_mambaout_{s}"].drop_path for s in ("femto", "kobe", "tiny", "small", "base")] \
        == [0.1, 0.1, 0.2, 0.3, 0.3]
    assert all(DETECTION_VARIANTS[n].paper_ap == PAPER[n][2:] for n in PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_params_and_flops_match_the_paper(name):
    m = measure(name)
    assert m["img_size"] == (800, 1280) and m["convention"] == "mmcv"
    assert (m["params"], m["macs"]) == EXACT[name]
    assert (m["params_m"], m["macs_g"]) == PAPER[name][:2]
    assert (m["paper_params_m"], m["paper_macs_g"]) == PAPER[name][:2]
    assert measure(name, (1280, 800))["macs"] == m["macs"]   # get_flops --shape 1280 800: same count


def test_flops_convention_details():
    with torch.device("meta"):
        model = mambaout.create_model("mask_rcnn_mambaout_tiny")
    # count_macs runs forward_dummy: box head on 1000 RoIs, mask head on 100, as mmdet does.
    assert count_macs(model, (800, 1280), convention="mmcv") == EXACT["mask_rcnn_mambaout_tiny"][1]
    # fvcore's rules on the same pass give another number; the femto / kobe rows have no paper numbers.
    assert measure("mask_rcnn_mambaout_tiny", convention="fvcore")["macs"] != EXACT["mask_rcnn_mambaout_tiny"][1]
    femto = measure("mask_rcnn_mambaout_femto")
    assert femto["paper_params_m"] is None and femto["paper_macs_g"] is None and femto["params_m"] == 26
    # Classification and segmentation numbers are untouched.
    assert measure("mambaout_tiny")["macs"] == 4_486_040_064
    assert measure("upernet_mambaout_tiny")["macs_g"] == 938


def test_forward_dummy_runs_for_real():
    model = small_model(num_classes=4)
    out = model.forward_dummy(torch.rand(1, 3, 64, 64), num_proposals=20, num_mask_rois=5)
    logits, boxes, masks = out[-3:]
    assert logits.shape == (20, 5) and boxes.shape == (20, 20) and masks.shape == (5, 5, 28, 28)
    assert len(out) == 3 + 2 * 5                                # objectness and deltas of 5 levels


def test_create_with_a_classification_checkpoint_for_the_backbone(tmp_path):
    clf = mambaout.create_model("mambaout_femto")
    torch.save({"model": clf.state_dict(), "epoch": 10}, tmp_path / "clf.pth")
    det = small_model(checkpoint_path=tmp_path / "clf.pth", drop_path_rate=0.1)
    sd = det.backbone.body.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in clf.state_dict().items() if not k.startswith("head."))
    assert det.backbone.body.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    with pytest.raises(CheckpointError):                                  # another variant: strict
        mambaout.create_model("mask_rcnn_mambaout_kobe", checkpoint_path=tmp_path / "clf.pth")


def test_detection_state_dict_round_trip(tmp_path, femto):
    femto.eval()
    torch.save({"model": femto.state_dict(), "epoch": 1}, tmp_path / "det.pth")
    again = small_model(checkpoint_path=tmp_path / "det.pth").eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in femto.state_dict().items())
    x = [torch.rand(3, 48, 72)]
    with torch.no_grad():
        a, b = again(x)[0], femto(x)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["masks"], b["masks"])
    with pytest.raises(CheckpointError) as e:                  # another class count: strict
        mambaout.create_model("mask_rcnn_mambaout_femto", checkpoint_path=tmp_path / "det.pth")
    assert "'roi_heads.box_predictor.cls_score.weight' has shape" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_loads_the_backbones_imagenet_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    clf = mambaout.create_model("mambaout_femto")
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp_path / "mambaout_femto.in1k.safetensors"))
    monkeypatch.setenv("MAMBAOUT_WEIGHTS_DIR", str(tmp_path))               # the hub path, no download
    det = mambaout.create_model("mask_rcnn_mambaout_femto", pretrained=True)
    assert torch.equal(det.backbone.body.stages[2].blocks[4].fc1.weight, clf.stages[2].blocks[4].fc1.weight)


def test_registry_names_and_errors():
    assert mambaout.list_detection_models() == [f"mask_rcnn_mambaout_{s}" for s in ("femto", "kobe", "tiny", "small", "base")] \
        + ["mask_rcnn_vmamba_tiny"]
    assert mambaout.list_detection_models("*_t*") == ["mask_rcnn_mambaout_tiny", "mask_rcnn_vmamba_tiny"]
    assert not [n for n in mambaout.list_models() if n.startswith("mask_rcnn")]
    assert all(DETECTION_VARIANTS[n].backbone in VARIANTS for n in DETECTION_VARIANTS)
    with pytest.raises(UnknownModelError) as e:
        mambaout.create_model("mask_rcnn_mambaout_tiy")
    assert "did you mean mask_rcnn_mambaout_tiny" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownModelError) as e:
        mambaout.create_mask_rcnn("mask_rcnn_resnet50")
    assert "\n" not in str(e.value)
    with pytest.raises(UnknownModelError, match="detection model"):
        mambaout.get_variant("mask_rcnn_mambaout_tiny")
    for bad in (dict(num_classes=0), dict(in_chans=1), dict(kernel_sizee=5), dict(min_size=0)):
        with pytest.raises(MambaOutError):
            mambaout.create_model("mask_rcnn_mambaout_femto", **bad)
