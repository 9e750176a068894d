"""Video data (src/mambaout/data/video.py, moving_digits.py): decoding, TSN sampling, the
layouts, skipping bad files, views, seeding, and the moving-digits set. Videos are written
here, tiny (64x48, 20 frames), each frame a flat colour of its own, so a decoded frame tells
which frame it was."""
import json
import logging
import pickle
import random
import sys

import numpy as np
import pytest
import torch

from mambaout.data import SeededSamples, collate_skip_bad
from mambaout.data.moving_digits import MOTIONS, MovingDigits
from mambaout.data.video import (VIDEO_EXTENSIONS, VideoClips, VideoLayoutError, VideoReadError, VideoSample,
                                 clip_to_tensor, decode_video, find_video_layout, read_clips, read_frames,
                                 read_list_file, read_ssv2, read_video_folders, read_video_split, segment_indices,
                                 video_eval_transform, video_train_transform, write_video)
from mambaout.errors import MambaOutError

av = pytest.importorskip("av")

T, H, W = 20, 48, 64
COLOURS = np.array([[(i * 53) % 256, (i * 97 + 40) % 256, (255 - i * 31) % 256] for i in range(T)], np.uint8)


def flat_frames(n=T):
    return np.broadcast_to(COLOURS[:n, None, None, :], (n, H, W, 3)).copy()


def frame_numbers(frames) -> list:
    """Which written frame each decoded frame is: the nearest colour."""
    means = np.asarray(frames, dtype=float).mean(axis=(1, 2))
    return [int(np.abs(COLOURS.astype(float) - m).sum(1).argmin()) for m in means]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """webm (VP9) and mp4 (H.264) of the 20 coloured frames, a 3-frame webm, and broken files."""
    d = tmp_path_factory.mktemp("videos")
    out = {"webm": write_video(d / "a.webm", flat_frames()), "mp4": write_video(d / "a.mp4", flat_frames()),
           "short": write_video(d / "short.webm", flat_frames(3))}
    data = out["webm"].read_bytes()
    (d / "empty.webm").write_bytes(b"")
    (d / "half.webm").write_bytes(data[:len(data) // 2])
    (d / "half.mp4").write_bytes(out["mp4"].read_bytes()[: len(out["mp4"].read_bytes()) // 2])
    (d / "notes.mp4").write_text("not a video\n")
    with av.open(str(out["webm"])) as c:           # a byte of frame 5's VP9 header zeroed (after the block's)
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size][5]
    (d / "corrupt.webm").write_bytes(data[:pos + 4] + b"\0" + data[pos + 5:])
    out.update({k: d / f for k, f in [("empty", "empty.webm"), ("half", "half.webm"), ("half_mp4", "half.mp4"),
                                       ("notes", "notes.mp4"), ("corrupt", "corrupt.webm"), ("missing", "none.webm")]})
    return out


# ---- decoding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["webm", "mp4"])
def test_decoding_returns_the_written_frames(videos, kind):
    frames = decode_video(videos[kind], lambda n: range(n))
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int).mean(axis=(1, 2)) - COLOURS).max() < 8      # 4:2:0, lossy
    clip = read_frames(videos[kind], 8, "test")
    assert clip.shape == (8, H, W, 3)
    assert frame_numbers(clip) == segment_indices(T, 8, "test")


def test_train_frames_follow_the_seeded_draw(videos):
    clip = read_frames(videos["webm"], 8, "train", rng=random.Random(3))
    assert frame_numbers(clip) == segment_indices(T, 8, "train", rng=random.Random(3))


def test_test_clips_are_decoded_together(videos):
    clips = read_clips(videos["mp4"], 8, num_clips=2)
    assert clips.shape == (2, 8, H, W, 3)
    for c in range(2):
        assert frame_numbers(clips[c]) == segment_indices(T, 8, "test", clip=c, num_clips=2)


def test_segment_indices():
    tick = T / 8
    assert segment_indices(T, 8, "test") == [int((s + 0.5) * tick) for s in range(8)]      # the centres
    assert segment_indices(T, 8, "test", clip=0, num_clips=2) == [int((s + 0.25) * tick) for s in range(8)]
    assert segment_indices(T, 8, "test", clip=1, num_clips=2) == [int((s + 0.75) * tick) for s in range(8)]
    rng = random.Random(0)
    for _ in range(200):
        idx = segment_indices(T, 8, "train", rng)
        assert all(np.ceil(s * tick) <= i < np.ceil((s + 1) * tick) for s, i in enumerate(idx))
        assert idx == sorted(set(idx))
    seen = {i for _ in range(300) for i in segment_indices(T, 8, "train", rng)}
    assert seen == set(range(T))                                       # every frame can be drawn
    random.seed(5)
    a = segment_indices(T, 8, "train")
    random.seed(5)
    assert segment_indices(T, 8, "train") == a                         # the global generator by default
    for mode in ("train", "test"):                                     # fewer frames than segments
        for n in (1, 3, 7):
            idx = segment_indices(n, 8, mode, random.Random(n))
            assert len(idx) == 8 and idx == sorted(idx) and 0 <= min(idx) and max(idx) < n
    assert segment_indices(3, 8, "test") == [0, 0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError):
        segment_indices(0, 8, "test")


def test_stream_cut_mid_gop_picks_among_the_decoded_frames(videos, tmp_path):
    """Packets that give no frame (a cut before the keyframe): the frames are chosen again
    among those that decode."""
    src, cut = tmp_path / "gop.mp4", tmp_path / "cut.mp4"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=12, options={"g": "5", "bf": "0", "crf": "18"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in flat_frames():
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    with av.open(str(src)) as c, av.open(str(cut), "w") as o:
        s = c.streams.video[0]
        out = o.add_stream_from_template(s)
        for i, p in enumerate(p for p in c.demux(s) if p.size):
            if i >= 2:
                p.stream = out
                o.mux(p)
    counts = []
    frames = decode_video(cut, lambda n: counts.append(n) or list(range(n)))
    assert counts[0] == T - 2 and len(counts) == 2 and counts[1] < counts[0] and len(frames) == counts[1]
    numbers = frame_numbers(frames)
    assert numbers == sorted(numbers) and numbers[-1] == T - 1
    with pytest.raises(VideoReadError, match=rf"only \d+ of its {T - 2} frames decode, needs {T - 2}$"):
        read_frames(cut, 8, "test", min_frames=T - 2)


@pytest.mark.parametrize("name, reason", [
    ("missing", "no such file"), ("empty", "empty file (0 bytes)"), ("notes", "not a readable video"),
    ("half", "truncated: its frames cover"), ("half_mp4", "not a readable video"),
    ("corrupt", "decoding failed after 5 frames"), ("short", "too short: 3 frames, needs 8")])
def test_bad_videos_are_one_line_errors_and_skipped(videos, name, reason, caplog):
    with pytest.raises(VideoReadError) as e:
        read_frames(videos[name], 8, "test", min_frames=8)
    message = str(e.value)
    assert message.startswith(f"cannot read video {videos[name]}: {reason}") and "\n" not in message
    assert isinstance(e.value, MambaOutError)
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == message
    ds = VideoClips([(videos[name], 0), (videos["webm"], 1)], ["a", "b"], num_frames=8,
                    transform=video_eval_transform(32))
    with caplog.at_level(logging.WARNING, logger="mambaout"):
        assert ds[0] is None and ds[0] is None
    assert sum("skipping unreadable video" in r.message for r in caplog.records) == 1     # once per file
    clips, targets, skipped = collate_skip_bad([ds[0], ds[1]])
    assert clips.shape == (1, 3, 8, 32, 32) and targets.tolist() == [1] and skipped == 1


def test_short_video_repeats_frames_when_allowed(videos):
    clip = read_frames(videos["short"], 8, "test", min_frames=1)
    assert frame_numbers(clip) == [0, 0, 0, 1, 1, 2, 2, 2]
    ds = VideoClips([VideoSample(str(videos["short"]), 0)], ["a"], num_frames=8, mode="test", min_frames=3)
    assert ds[0][0].shape == (8, H, W, 3)


def test_missing_extra_names_the_pip_extra(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    for call in (lambda: read_frames(videos["webm"], 8, "test"), lambda: VideoClips([], [])):
        with pytest.raises(MambaOutError, match=r"pip install 'mambaout\[video\]'"):
            call()


def test_write_video_refuses_odd_sizes(tmp_path):
    with pytest.raises(MambaOutError, match="even sizes"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 47, 64, 3), np.uint8))
    assert not (tmp_path / "odd.mp4").exists()


# ---- layouts -----------------------------------------------------------------------------------------

SSV2_CLASSES = ["Holding something", "Putting something on a surface", "Pushing something from left to right"]


def write_ssv2(root, labels=None, train=None):
    (root / "labels").mkdir(parents=True)
    (root / "20bn-something-something-v2").mkdir()
    labels = labels if labels is not None else {c: str(i) for i, c in reversed(list(enumerate(SSV2_CLASSES)))}
    entries = train if train is not None else [
        {"id": "11", "label": "putting a cup on a surface", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": "12", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]}]
    val = [{"id": "21", "label": "pushing a box from left to right",
            "template": "Pushing [something] from left to right", "placeholders": ["a box"]}]
    for name, data in [("labels.json", labels), ("train.json", entries), ("validation.json", val)]:
        (root / "labels" / name).write_text(json.dumps(data, indent=1))
    return root


def test_ssv2_maps_templates_to_classes(tmp_path):
    root = write_ssv2(tmp_path / "ssv2")
    samples, classes = read_ssv2(root, "train")
    assert classes == SSV2_CLASSES
    videos = root / "20bn-something-something-v2"
    assert samples == [VideoSample(str(videos / "11.webm"), 1), VideoSample(str(videos / "12.webm"), 0)]
    for split in ("validation", "val"):
        assert read_ssv2(tmp_path, split)[0] == [VideoSample(str(videos / "21.webm"), 2)]    # the folder above
    assert find_video_layout(tmp_path) == "ssv2" and read_video_split(root, "val")[1] == SSV2_CLASSES
    with pytest.raises(VideoLayoutError, match="test set has no labels"):
        read_ssv2(root, "test")


@pytest.mark.parametrize("labels, train, message", [
    (None, "missing", r"train.json: missing \(the train list\)"),
    (None, "bad", r"train.json:2:\d+: not valid JSON"),
    (None, [{"id": "1", "template": "Holding [something]"}, {"id": "12345", "template": "Dropping [something]"}],
     r"train.json: entry 2 \(id 12345\): template 'Dropping \[something\]' is not in labels.json"),
    ({"a": "0", "b": "2"}, None, r"labels.json: class indices must be 0..1"),
    ({"a": "0", "b": "zero"}, None, r"labels.json: class 'b' has index 'zero', not a number"),
])
def test_ssv2_errors_name_the_file_and_entry(tmp_path, labels, train, message):
    root = write_ssv2(tmp_path, labels, train if isinstance(train, list) else None)
    if train == "missing":
        (root / "labels" / "train.json").unlink()
    elif train == "bad":
        (root / "labels" / "train.json").write_text('[\n {"id": 1,,}\n]')
    with pytest.raises(VideoLayoutError, match=message) as e:
        read_ssv2(root, "train")
    assert "\n" not in str(e.value)


def test_list_files(tmp_path):
    (tmp_path / "lists").mkdir()
    spaced = tmp_path / "lists" / "train.csv"
    spaced.write_text("# path label\nclips/a b.webm 2\n\n/abs/c.mp4 0\n")
    samples, classes = read_list_file(spaced)
    assert samples == [VideoSample(str(tmp_path / "lists" / "clips/a b.webm"), 2), VideoSample("/abs/c.mp4", 0)]
    assert classes == ["0", "1", "2"]
    commas = tmp_path / "lists" / "val.csv"
    commas.write_text("x.webm,1\ny.webm, 0\n")
    samples, classes = read_list_file(commas, video_root=tmp_path / "videos", classes=["p", "q"])
    assert [s.path for s in samples] == [str(tmp_path / "videos" / "x.webm"), str(tmp_path / "videos" / "y.webm")]
    assert [s.label for s in samples] == [1, 0] and classes == ["p", "q"]
    for text, classes, message in [("a.webm 1\nb.webm one\n", None, r"val.csv:2: label 'one' is not a number"),
                                   ("a.webm 1\nb.webm 2\n", ["p", "q"], r"val.csv:2: label 2 outside 0..1"),
                                   ("a.webm\n", None, r"val.csv:1: expected '<path> <label>'"),
                                   ("\n# nothing\n", None, r"val.csv: no videos listed")]:
        commas.write_text(text)
        with pytest.raises(VideoLayoutError, match=message):
            read_list_file(commas, classes=classes)


def test_video_folders(tmp_path, videos):
    for split, names in [("train", ["run", "jump"]), ("val", ["run"])]:
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "v.webm").write_bytes(videos["webm"].read_bytes())
            (tmp_path / split / name / "notes.txt").write_text("-")
    samples, classes = read_video_folders(tmp_path / "train")
    assert classes == ["jump", "run"] and [s.label for s in samples] == [0, 1]
    assert find_video_layout(tmp_path) == "folders"
    val, classes = read_video_split(tmp_path, "val")
    assert classes == ["jump", "run"] and [s.label for s in val] == [1]           # train's class indices
    with pytest.raises(VideoLayoutError, match="not a video dataset"):
        find_video_layout(tmp_path / "train" / "run")
    assert ".webm" in VIDEO_EXTENSIONS and ".mp4" in VIDEO_EXTENSIONS


# ---- transforms, views and seeding -------------------------------------------------------------------

def test_clip_to_tensor():
    x = clip_to_tensor(np.full((4, 6, 8, 3), 255, np.uint8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    assert x.shape == (3, 4, 6, 8) and x.is_contiguous()
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([1.0, 2.0, 0.5]))


def test_eval_views_are_clips_times_crops(videos):
    ds = VideoClips([(videos["webm"], 0)], ["a"], num_frames=8, mode="test", num_clips=2,
                    transform=video_eval_transform(32, num_crops=3))
    clip, label = ds[0]
    assert clip.shape == (6, 3, 8, 32, 32) and label == 0
    one = VideoClips([(videos["webm"], 0)], ["a"], num_frames=8, mode="test", transform=video_eval_transform(32))
    assert one[0][0].shape == (3, 8, 32, 32)
    # a 64x48 video resized to 43x32: 3 crops at 0, int(5.5) and 11 along the width (VideoMamba's test
    # crops); one crop at round(5.5) = 6 (its validation CenterCrop)
    frame = np.zeros((1, H, W, 3), np.uint8)
    frame[..., 0] = np.arange(W, dtype=np.uint8)[None, None, :] * 4
    left, centre, right = video_eval_transform(32, num_crops=3, mean=(0, 0, 0), std=(1, 1, 1))(frame)
    assert torch.equal(left[..., 5:], centre[..., :-5]) and torch.equal(centre[..., 6:], right[..., :-6])
    one = video_eval_transform(32, mean=(0, 0, 0), std=(1, 1, 1))(frame)
    assert torch.equal(one[..., :-1], centre[..., 1:])


def test_train_transform_draws_once_per_video():
    """A still video stays still: the crop box, the flip and RandAugment are the same in every frame."""
    still = np.repeat(np.random.default_rng(0).integers(0, 256, (1, H, W, 3), dtype=np.uint8), 8, axis=0)
    tf = video_train_transform(32, auto_augment="rand-m9-n3-mstd0.5-inc1", hflip=0.5)
    for seed in range(6):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        clip = tf(still)
        assert clip.shape == (3, 8, 32, 32)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))
    erased = video_train_transform(32, re_prob=1.0)(still)                     # VideoMamba erases per frame
    assert not torch.equal(erased, erased[:, :1].expand_as(erased)) and erased.is_contiguous()


def test_same_seed_same_clip_other_seed_other_crop(videos):
    tf = video_train_transform(32, auto_augment="rand-m5-n2-mstd0.25-inc1")
    ds = SeededSamples(VideoClips([(videos["mp4"], 0)], ["a"], num_frames=8, transform=tf), seed=7)
    a, b, c = ds[(0, 0)][0], ds[(0, 0)][0], ds[(0, 1)][0]
    assert a.shape == (3, 8, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


# ---- moving digits -----------------------------------------------------------------------------------

def test_moving_digits_sizes_and_determinism():
    ds = MovingDigits("train", per_class=4)
    assert len(ds) == 28 and ds.classes == list(MOTIONS) and ds.targets[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    frames, label = ds[9]
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8 and label == 2
    assert np.array_equal(MovingDigits("train", per_class=4)[9][0], frames)
    assert not np.array_equal(MovingDigits("val", per_class=4)[9][0], frames)
    assert len(MovingDigits("val")) == 7 * 80 and len(MovingDigits("train")) == 7 * 300
    big = MovingDigits("val", num_frames=16, img_size=64, per_class=2, transform=clip_to_tensor)
    assert big[3][0].shape == (3, 16, 64, 64)


def test_opposite_motions_are_the_same_frames_reversed():
    ds = MovingDigits("val", per_class=5)
    for k in range(5):
        clips = {m: ds[7 * k + i][0] for i, m in enumerate(MOTIONS)}
        for a, b in [("left", "right"), ("up", "down"), ("towards", "away")]:
            assert np.array_equal(clips[a], clips[b][::-1])
            assert np.array_equal(clips[a].astype(float).mean(0), clips[b][::-1].astype(float).mean(0))
            assert not np.array_equal(clips[a], clips[b])
        ink = [np.abs(f.astype(float) - np.median(f, axis=(0, 1))).sum() for f in clips["towards"]]
        assert ink[-1] > 2 * ink[0]                                             # towards: the digit grows
        still = clips["still"].astype(float)
        assert np.abs(still - still.mean(0)).max() < 60                         # only the noise changes


def test_moving_digits_val_digits_are_not_training_digits():
    train, val = MovingDigits("train", per_class=1), MovingDigits("val", per_class=1)
    train_set = {d.tobytes() for d in train.digits}
    assert not any(d.tobytes() in train_set for d in val.digits)
