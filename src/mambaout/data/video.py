"""Video data: decoding, TSN frame sampling, the dataset layouts, the clip dataset and transforms.

Decoding uses PyAV (the `video` extra: self-contained wheels with FFmpeg, VP9 and H.264). A clip
is `num_segments` frames picked by TSN sparse sampling: the video is cut into equal segments
and one frame is taken from each (a random one while training, a fixed one for testing).

    read_frames(path, 8, "train")          uint8 [8, H, W, 3] RGB, or VideoReadError (one line)
    read_ssv2(root, "train")               Something-Something V2 as released
    read_list_file(f) / read_video_folders(root) / read_video_split(data, split)
    VideoClips(samples, classes, 8, "train", video_train_transform(224, auto_augment=...))

A video that cannot be read comes back from VideoClips as None, counted and skipped by
`collate_skip_bad`, as an unreadable image is. Every random draw (frames, crop box, flip,
RandAugment, erasing) comes from Python's `random`, NumPy's and torch's global generators, which
the engine seeds per sample and epoch (SeededSamples): a resumed run sees the same clips.
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MambaOutError, first_line, require
from ..utils import atomic_write
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _fix_zero_bit_posterize

log = logging.getLogger("mambaout")

VIDEO_EXTENSIONS = (".webm", ".mp4", ".avi", ".mkv", ".mov", ".m4v")

# One decoding thread per video: the loader's workers already decode several videos at once.
DECODE_THREADS = 1


class VideoReadError(MambaOutError):
    """A video that cannot be decoded: missing, empty, not a video, truncated, or too short."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot read video {path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # travels between processes with its two arguments
        return type(self), (self.path, self.reason)


class VideoLayoutError(MambaOutError):
    """A video dataset's files do not have the layout they claim (one line: file, entry, problem)."""


def _av():
    return require("av", "video", "video decoding")


# ---- which frames -----------------------------------------------------------------------------------

def segment_indices(num_frames: int, num_segments: int, mode: str, rng=None, clip: int = 0,
                    num_clips: int = 1) -> List[int]:
    """TSN sparse sampling: [0, num_frames) cut into `num_segments` equal segments (float
    boundaries), one frame index from each. "train": a uniformly random frame of the segment
    (from `rng`, a random.Random; default the global `random` module, which the engine seeds);
    "test": the frame at fraction (clip + 0.5) / num_clips of the segment (one clip: the centre,
    as VideoMamba's `int(tick / 2 + tick * x)`). With fewer frames than segments the indices
    repeat; they never decrease and never leave [0, num_frames)."""
    if num_frames < 1 or num_segments < 1:
        raise ValueError(f"need at least one frame and one segment, got {num_frames} and {num_segments}")
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} outside 0..{num_clips - 1}")
    rng = random if rng is None else rng
    tick = num_frames / num_segments
    indices = []
    for s in range(num_segments):
        start, end = s * tick, (s + 1) * tick
        if mode == "test":
            indices.append(int(start + (clip + 0.5) / num_clips * tick))
        elif math.ceil(end) > math.ceil(start):     # the frames whose index lies in [start, end)
            indices.append(rng.randrange(math.ceil(start), math.ceil(end)))
        else:                                       # a segment shorter than a frame: the frame it is in
            indices.append(int(start))
    return [min(i, num_frames - 1) for i in indices]


def multi_clip_indices(num_frames: int, num_segments: int, num_clips: int) -> List[int]:
    """The test indices of clips 0..num_clips-1, concatenated (read_clips decodes them at once)."""
    return [i for c in range(num_clips) for i in segment_indices(num_frames, num_segments, "test", clip=c,
                                                                     num_clips=num_clips)]


# ---- decoding ---------------------------------------------------------------------------------------

def read_frames(path, num_segments: int, mode: str, rng=None, clip: int = 0, num_clips: int = 1,
                min_frames: int = 1) -> np.ndarray:
    """`num_segments` frames of the video at `path` picked by segment_indices: uint8
    [num_segments, H, W, 3] RGB. VideoReadError (one line) for a missing file, an empty one, a
    file that is not a video or has no video stream, one that fails to decode, or one with fewer
    than `min_frames` frames."""
    choose = partial(segment_indices, num_segments=num_segments, mode=mode, rng=rng, clip=clip, num_clips=num_clips)
    return decode_video(path, choose, min_frames)


def read_clips(path, num_segments: int, num_clips: int, min_frames: int = 1) -> np.ndarray:
    """The `num_clips` test clips of a video, decoded once: uint8 [num_clips, num_segments, H, W, 3]."""
    choose = partial(multi_clip_indices, num_segments=num_segments, num_clips=num_clips)
    frames = decode_video(path, choose, min_frames)
    return frames.reshape(num_clips, num_segments, *frames.shape[1:])


def decode_video(path, choose: Callable[[int], Sequence[int]], min_frames: int = 1) -> np.ndarray:
    """The frames `choose(frame_count)` of a video, uint8 [len, H, W, 3] RGB, in one sequential
    decoding pass that converts and keeps only the chosen frames (memory: the compressed video
    plus those frames). The frame count is the number of video packets (one per frame in WebM,
    MP4, AVI, MKV); when decoding gives a different number (a stream cut mid-GOP), the video is
    decoded again, every frame kept, and `choose` asked again with the true count."""
    av = _av()
    path = _video_file(path)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            packets = [p for p in container.demux(stream) if p.size]
            _check_complete(path, container, stream, packets)
            _check_length(path, len(packets), min_frames)
            indices = list(choose(len(packets)))
            frames = (f for p in [*packets, None] for f in stream.decode(p))
            kept, decoded = _keep_frames(path, frames, set(indices))
        if decoded != len(packets):
            with av.open(str(path)) as container:
                kept, decoded = _keep_frames(path, container.decode(_video_stream(container, path)), None)
            need = max(1, min_frames)
            if decoded < need:
                raise VideoReadError(path, f"only {decoded} of its {len(packets)} frames decode, needs {need}")
            indices = list(choose(decoded))
    except av.error.FFmpegError as e:
        raise VideoReadError(path, f"not a readable video ({_ffmpeg_reason(e)})") from None
    return np.stack([kept[i] for i in indices])


def _video_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    return path


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoReadError(path, "no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = DECODE_THREADS
    return stream


def _check_length(path: Path, frames: int, min_frames: int) -> None:
    if frames == 0:
        raise VideoReadError(path, "no frames")
    if frames < min_frames:
        raise VideoReadError(path, f"too short: {frames} frame{'s' * (frames != 1)}, needs {min_frames}")


# A file whose frames cover less than this part of the duration its header declares was cut short.
COMPLETE = 0.75


def _check_complete(path: Path, container, stream, packets) -> None:
    """A WebM file cut short still demuxes, up to the cut: its frames then end well before the
    duration its header declares. Checked where that duration is the video's own: the stream's,
    or the container's when the video is its only stream."""
    if stream.duration:
        declared = float(stream.duration * stream.time_base)
    elif len(container.streams) == 1 and container.duration:
        declared = container.duration / 1_000_000          # AV_TIME_BASE: microseconds
    else:
        return
    rate = stream.average_rate or stream.guessed_rate
    times = [p.pts for p in packets if p.pts is not None]
    if not rate or not times:
        return
    covered = float((max(times) - min(times)) * stream.time_base + 1 / rate)
    if covered < COMPLETE * declared:
        raise VideoReadError(path, f"truncated: its frames cover {covered:.2f} s of the {declared:.2f} s "
                                   "its header declares")


def _keep_frames(path: Path, frames: Iterable, keep: Optional[Set[int]]) -> Tuple[Dict[int, np.ndarray], int]:
    """({index: RGB array} of the frames in `keep` (all when None), how many frames there were).
    Every frame is converted at the first frame's size (a stream may change size midway)."""
    av = _av()
    kept, count, size = {}, 0, {}
    try:
        for frame in frames:
            size = size or {"width": frame.width, "height": frame.height}
            if keep is None or count in keep:
                kept[count] = frame.to_ndarray(format="rgb24", **size)
            count += 1
    except av.error.FFmpegError as e:
        raise VideoReadError(path, f"decoding failed after {count} frames ({_ffmpeg_reason(e)})") from None
    return kept, count


def _ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's words for an error ("Invalid data found when processing input"), without the path."""
    return getattr(e, "strerror", None) or first_line(e)


# ---- encoding ---------------------------------------------------------------------------------------

# extension -> (FFmpeg container format, encoders in order of preference)
CONTAINERS = {
    ".webm": ("webm", ("libvpx-vp9",)),
    ".mkv": ("matroska", ("libvpx-vp9", "libx264", "mpeg4")),
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".avi": ("avi", ("mpeg4",)),
}
ENCODER_OPTIONS = {  # quick settings with good quality for small test and demo videos
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},   # constant quality
    "libx264": {"preset": "veryfast", "crf": "18"},
    "mpeg4": {"flags": "+qscale", "global_quality": str(2 * 118)},   # fixed quantiser 2 (x FF_QP2LAMBDA)
}


def write_video(path, frames: np.ndarray, fps: int = 12) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] (H and W even, as 4:2:0 chroma needs) as a video:
    .webm -> VP9, .mp4 / .m4v / .mov -> H.264 (libx264, else MPEG-4 part 2), .mkv -> VP9, .avi ->
    MPEG-4 part 2. Written atomically (WriteError on failure). For tests and users' tools."""
    av = _av()
    path = Path(path)
    frames = np.asarray(frames)
    if path.suffix.lower() not in CONTAINERS:
        raise MambaOutError(f"cannot write video {path}: unknown extension (use one of {', '.join(CONTAINERS)})")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise MambaOutError(f"cannot write video {path}: frames must be uint8 [T, H, W, 3], got "
                            f"{frames.dtype} {list(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MambaOutError(f"cannot write video {path}: frames are {width}x{height}; the codecs need even sizes")
    fmt, encoders = CONTAINERS[path.suffix.lower()]
    codec = next((c for c in encoders if c in av.codecs_available), None)
    if codec is None:
        raise MambaOutError(f"cannot write video {path}: this FFmpeg has none of the encoders {', '.join(encoders)}")

    def write(tmp):
        with av.open(tmp, "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=fps, options=ENCODER_OPTIONS.get(codec, {}))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode(None))
    return atomic_write(path, write)


# ---- layouts ----------------------------------------------------------------------------------------

@dataclass
class VideoSample:
    path: str
    label: int


SSV2_VIDEOS = "20bn-something-something-v2"
SSV2_SPLITS = {"train": "train.json", "validation": "validation.json", "val": "validation.json"}


def find_ssv2_root(root) -> Optional[Path]:
    """The Something-Something V2 folder (holding labels/labels.json or 20bn-something-something-v2/):
    `root` itself or a folder directly inside it; None when there is none."""
    root = Path(root)
    candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for folder in candidates:
        if (folder / "labels" / "labels.json").is_file() or (folder / SSV2_VIDEOS).is_dir():
            return folder
    return None


def read_ssv2(root, split: str) -> Tuple[List[VideoSample], List[str]]:
    """One split ("train", "validation" or "val") of Something-Something V2 as released:
    root/20bn-something-something-v2/<id>.webm, root/labels/labels.json ({class: "index"}) and
    root/labels/{train,validation}.json (entries {"id", "label", "template", "placeholders"};
    the class is the template without its square brackets). `root` may also be the folder
    above. Classes are ordered by their index. The test set has no labels and is no split."""
    if split not in SSV2_SPLITS:
        raise VideoLayoutError(f"Something-Something V2 has no split {split!r} (splits: train, validation; "
                               "the test set has no labels)")
    folder = find_ssv2_root(root)
    if folder is None:
        raise VideoLayoutError(f"{root}: not a Something-Something V2 folder "
                               f"(expected labels/labels.json and {SSV2_VIDEOS}/)")
    classes = _ssv2_classes(folder / "labels" / "labels.json")
    index = {c: i for i, c in enumerate(classes)}
    videos = _need(folder / SSV2_VIDEOS, "the videos")
    list_file = folder / "labels" / SSV2_SPLITS[split]
    entries = _read_json(list_file, f"the {SSV2_SPLITS[split][:-5]} list")
    if not isinstance(entries, list):
        raise VideoLayoutError(f"{list_file}: expected a list of entries, got {type(entries).__name__}")
    samples = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise VideoLayoutError(f"{list_file}: entry {n}: expected an object with 'id' and 'template'")
        name = str(entry["template"]).replace("[", "").replace("]", "")
        if name not in index:
            raise VideoLayoutError(f"{list_file}: entry {n} (id {entry['id']}): template {entry['template']!r} "
                                   "is not in labels.json")
        samples.append(VideoSample(str(videos / f"{entry['id']}.webm"), index[name]))
    return samples, classes


def _ssv2_classes(path: Path) -> List[str]:
    """labels.json's class names ordered by index; the indices must be 0..N-1."""
    table = _read_json(path, "the class list")
    if not isinstance(table, dict) or not table:
        raise VideoLayoutError(f"{path}: expected an object {{class name: index}}")
    by_index = {}
    for name, value in table.items():
        try:
            by_index.setdefault(int(value), []).append(name)
        except (TypeError, ValueError):
            raise VideoLayoutError(f"{path}: class {name!r} has index {value!r}, not a number") from None
    if sorted(by_index) != list(range(len(table))):
        doubled = sorted(i for i, names in by_index.items() if len(names) > 1)
        problem = f"index {doubled[0]} used twice" if doubled else f"indices {min(by_index)}..{max(by_index)}"
        raise VideoLayoutError(f"{path}: class indices must be 0..{len(table) - 1} ({problem})")
    return [by_index[i][0] for i in range(len(table))]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise VideoLayoutError(f"{path}: missing ({what})")
    return path


def _read_json(path: Path, what: str):
    _need(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VideoLayoutError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VideoLayoutError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


LIST_LINE = re.compile(r"^(?P<path>.+?)[\s,]+(?P<label>[^\s,]+)$")


def read_list_file(list_file, video_root=None, classes: Optional[Sequence[str]] = None
                   ) -> Tuple[List[VideoSample], List[str]]:
    """A list of videos, one `<path> <label>` a line (separated by spaces or a comma, as
    VideoMamba's csv files): the last field is the integer label, the rest the path. Blank lines
    and '#' lines are skipped. Relative paths resolve against `video_root` (default: the list
    file's folder). Class names: `classes` when given (labels must be below their count), else
    "0".."max label"."""
    list_file = Path(list_file)
    _need(list_file, "the video list")
    root = Path(video_root) if video_root is not None else list_file.parent
    try:
        lines = list_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise VideoLayoutError(f"{list_file}: cannot read ({e.strerror or e})") from None
    samples = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = LIST_LINE.match(line)
        if m is None:
            raise VideoLayoutError(f"{list_file}:{n}: expected '<path> <label>', got {line!r}")
        try:
            label = int(m["label"])
        except ValueError:
            raise VideoLayoutError(f"{list_file}:{n}: label {m['label']!r} is not a number") from None
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = f"0..{len(classes) - 1}" if classes is not None else "0 or more"
            raise VideoLayoutError(f"{list_file}:{n}: label {label} outside {limit}")
        samples.append(VideoSample(str(root / m["path"].rstrip(", \t")), label))
    if not samples:
        raise VideoLayoutError(f"{list_file}: no videos listed (expected '<path> <label>' lines)")
    names = list(classes) if classes is not None else [str(i) for i in range(max(s.label for s in samples) + 1)]
    return samples, names


def read_video_folders(root, classes: Optional[Sequence[str]] = None) -> Tuple[List[VideoSample], List[str]]:
    """root/<class>/<video> (any depth below the class folder), classes sorted by name; with
    `classes` given (e.g. the training split's), the folders must be among them."""
    root = Path(root)
    if not root.is_dir():
        raise VideoLayoutError(f"video folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        extra = sorted(set(found) - set(classes))
        raise VideoLayoutError(f"{root} has classes the training split does not: {', '.join(extra[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    samples = [VideoSample(str(p), index[c]) for c in found for p in sorted((root / c).rglob("*"))
               if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    if not samples:
        raise VideoLayoutError(f"no videos found under {root} (expected {root}/<class>/<video>, "
                               f"one of {' '.join(VIDEO_EXTENSIONS)})")
    return samples, list(classes)


def find_video_layout(data) -> str:
    """"ssv2" (labels/labels.json or 20bn-something-something-v2/ at `data` or one folder down) or
    "folders" (data/train/<class>/<video> and data/val/<class>/<video>)."""
    data = Path(data)
    if not data.is_dir():
        raise VideoLayoutError(f"video dataset folder not found: {data}")
    if find_ssv2_root(data) is not None:
        return "ssv2"
    if (data / "train").is_dir() and (data / "val").is_dir():
        return "folders"
    raise VideoLayoutError(f"{data}: not a video dataset (expected Something-Something V2: labels/labels.json and "
                           f"{SSV2_VIDEOS}/, or train/<class>/<video> and val/<class>/<video>)")


def read_video_split(data, split: str) -> Tuple[List[VideoSample], List[str]]:
    """Split "train" or "val" of the dataset at `data`, whichever layout it has. The folders
    layout takes its classes from train/, so both splits index them alike."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if find_video_layout(data) == "ssv2":
        return read_ssv2(data, split)
    classes = read_video_folders(Path(data) / "train")[1]
    return read_video_folders(Path(data) / split, classes)


# ---- transforms -------------------------------------------------------------------------------------

def clip_to_tensor(frames, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (an array, or a list of RGB PIL images) -> normalised float
    [3, T, H, W]."""
    array = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 0, 1, 2))).float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1, 1)
    return x.sub_(m).div_(s)


def _pil_frames(frames) -> List[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(f)) for f in frames]


def same_draw_for_each(op: Callable, frames: List[Image.Image]) -> List[Image.Image]:
    """`op` applied to every frame with the same random draws (Python's and NumPy's generators
    are put back before each frame), leaving the generators advanced once: one augmentation
    per video, not one per frame."""
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    for k, frame in enumerate(frames):
        if k:
            random.setstate(py_state)
            np.random.set_state(np_state)
        out.append(op(frame))
    return out


class VideoTrainTransform:
    """Training augmentation of a clip (uint8 [T, H, W, 3]) -> float [3, T, img_size, img_size]:
    one random-resized-crop box and one flip decision per video, applied to every frame;
    RandAugment with one draw per video; normalise; random erasing frame by frame (as VideoMamba
    applies timm's RandomErasing to the [T, C, H, W] clip). Draws: the crop box from torch, the
    flip and RandAugment from Python's random and NumPy, the erasing from Python's random and torch."""

    def __init__(self, img_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), auto_augment: Optional[str] = None,
                 hflip: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
                 re_prob: float = 0.0):
        from timm.data.transforms import str_to_pil_interp
        self.img_size, self.scale, self.ratio = int(img_size), tuple(scale), tuple(ratio)
        self.hflip, self.mean, self.std = float(hflip), tuple(mean), tuple(std)
        self.interpolation = str_to_pil_interp(interpolation)
        self.augment = None
        if auto_augment:
            from timm.data.auto_augment import rand_augment_transform
            self.augment = rand_augment_transform(auto_augment, dict(
                translate_const=int(self.img_size * 0.45), img_mean=tuple(round(255 * m) for m in mean),
                interpolation=self.interpolation))
            _fix_zero_bit_posterize(self.augment)
        self.erase = None
        if re_prob > 0:
            from timm.data.random_erasing import RandomErasing
            self.erase = RandomErasing(re_prob, mode="pixel", device="cpu")

    def __call__(self, frames) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop
        images = _pil_frames(frames)
        top, left, h, w = RandomResizedCrop.get_params(images[0], self.scale, self.ratio)
        size = (self.img_size, self.img_size)
        images = [im.resize(size, self.interpolation, box=(left, top, left + w, top + h)) for im in images]
        if self.hflip > 0 and random.random() < self.hflip:
            images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        if self.augment is not None:
            images = same_draw_for_each(self.augment, images)
        clip = clip_to_tensor(images, self.mean, self.std)
        if self.erase is not None:
            self.erase(clip.transpose(0, 1))     # in place, each [C, H, W] frame on its own
        return clip


class VideoEvalTransform:
    """Evaluation views of a clip (uint8 [T, H, W, 3]): the short side resized to img_size
    (bilinear, as VideoMamba), then `num_crops` img_size squares along the long side (1: the
    centre; 3: start, centre, end, as VideoMamba's test crops): one float tensor [3, T, S, S]
    for one crop, else a list of them."""

    def __init__(self, img_size=224, num_crops=1, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"):
        from timm.data.transforms import str_to_pil_interp
        if num_crops < 1:
            raise ValueError(f"num_crops must be at least 1, got {num_crops}")
        self.img_size, self.num_crops, self.mean, self.std = int(img_size), int(num_crops), tuple(mean), tuple(std)
        self.interpolation = str_to_pil_interp(interpolation)

    def __call__(self, frames) -> Union[torch.Tensor, List[torch.Tensor]]:
        images = _pil_frames(frames)
        w, h = images[0].size
        factor = self.img_size / min(w, h)
        size = (max(self.img_size, round(w * factor)), max(self.img_size, round(h * factor)))
        clip = clip_to_tensor([im.resize(size, self.interpolation) for im in images], self.mean, self.std)
        views = []
        for start in crop_starts(max(size) - self.img_size, self.num_crops):
            if size[0] >= size[1]:
                views.append(clip[:, :, :, start:start + self.img_size].contiguous())
            else:
                views.append(clip[:, :, start:start + self.img_size, :].contiguous())
        return views[0] if self.num_crops == 1 else views


def crop_starts(slack: int, num_crops: int) -> List[int]:
    """Offsets of `num_crops` crops spread evenly over `slack` spare pixels (1 crop: the centre)."""
    if num_crops == 1:
        return [int(round(slack / 2))]
    return [int(k * slack / (num_crops - 1)) for k in range(num_crops)]


def video_train_transform(img_size=224, scale=(0.08, 1.0), auto_augment: Optional[str] = None, hflip: float = 0.0,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic", ratio=(3 / 4, 4 / 3),
                          re_prob: float = 0.0) -> VideoTrainTransform:
    """The training transform (VideoTrainTransform). VideoMamba's SSV2 recipe: scale (0.08, 1),
    ratio (3/4, 4/3), auto_augment "rand-m5-n2-mstd0.25-inc1", no flip (left and right are
    different classes), random erasing 0.25."""
    return VideoTrainTransform(img_size, scale, ratio, auto_augment, hflip, mean, std, interpolation, re_prob)


def video_eval_transform(img_size=224, num_crops=1, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         interpolation="bilinear") -> VideoEvalTransform:
    """The evaluation transform (VideoEvalTransform): VideoMamba validates on the centre crop and
    tests on 3 crops (x 2 temporal clips)."""
    return VideoEvalTransform(img_size, num_crops, mean, std, interpolation)


# ---- the clip dataset -------------------------------------------------------------------------------

class VideoClips(Dataset):
    """Videos with their labels as clips of `num_frames` TSN-sampled frames.

    mode "train": one clip with random frames per segment, `transform(frames)` -> [3, T, H, W].
    mode "test": `num_clips` clips at fixed positions, decoded at once; each through `transform`
    (a tensor, or a list of crop views): one view gives [3, T, H, W], several are stacked as
    [V, 3, T, H, W], V = num_clips x crops, clip-major. Without a transform, the uint8 frames
    [T, H, W, 3] (or [num_clips, T, H, W, 3]).

    A video that cannot be read, or has fewer than `min_frames` frames (default num_frames),
    comes back as None (a warning once per file): collate_skip_bad drops and counts it."""

    def __init__(self, samples: Sequence[Union[VideoSample, Tuple[str, int]]], classes: Sequence[str],
                 num_frames: int = 8, mode: str = "train", transform: Optional[Callable] = None,
                 num_clips: int = 1, min_frames: Optional[int] = None):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        _av()   # the missing extra is one line now, not a skipped sample per video later
        self.samples = [(s.path, s.label) if isinstance(s, VideoSample) else (str(s[0]), int(s[1])) for s in samples]
        self.classes, self.targets = list(classes), [t for _, t in self.samples]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_frames, self.mode, self.transform, self.num_clips = int(num_frames), mode, transform, int(num_clips)
        self.min_frames = self.num_frames if min_frames is None else int(min_frames)
        self._warned: Set[str] = set()

    def __len__(self):
        return len(self.samples)

    def read(self, i) -> np.ndarray:
        """The frames of sample i: [T, H, W, 3] ("train") or [num_clips, T, H, W, 3] ("test")."""
        path = self.samples[i][0]
        if self.mode == "train":
            return read_frames(path, self.num_frames, "train", min_frames=self.min_frames)
        return read_clips(path, self.num_frames, self.num_clips, self.min_frames)

    def __getitem__(self, i):
        path, target = self.samples[i]
        try:
            frames = self.read(i)
        except VideoReadError as e:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping unreadable video %s (%s)", path, e.reason[:120])
            return None
        if self.transform is None:
            return (frames if self.mode == "train" or self.num_clips > 1 else frames[0]), target
        if self.mode == "train":
            return self.transform(frames), target
        views = [v for clip in frames for v in _as_list(self.transform(clip))]
        return (views[0] if len(views) == 1 else torch.stack(views)), target


def _as_list(views) -> list:
    return list(views) if isinstance(views, (list, tuple)) else [views]
