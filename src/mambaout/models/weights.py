"""Reading checkpoints safely and fitting them to a model.

Accepted: timm's MambaOut layout (ours), the official release's layout, either
plain or wrapped in {'model': ...} / {'state_dict': ...} (and DDP's 'module.'
prefix), stored as .pth/.pt/.bin (torch.load with weights_only=True, so no
arbitrary objects are unpickled; a released checkpoint's yacs config comes back as a
plain OrderedDict, see InertConfig) or .safetensors. VMamba v0's official layout is our own
(models/vmamba.py keeps its names).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from ..errors import CheckpointError, first_line

log = logging.getLogger("mambaout")

CLASSIFIER_KEYS = ("head.fc.weight", "head.fc.bias")


class InertConfig:
    """Stands in for a training script's config object pickled beside the weights (VMamba's
    released checkpoints hold a yacs CfgNode under 'config'): unpickling it makes a plain
    OrderedDict of what was stored (torch's weights-only unpickler fills those), never an
    instance of the original class, so no code of it runs."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _inert(module: str, name: str):
    return type(name, (InertConfig,), {"__module__": module, "__qualname__": name})


# The config classes that may come with released weights (VMamba: a yacs CfgNode; Vim, iLLaMA,
# EfficientVMamba, LocalVMamba: the argparse Namespace of the training script), read as
# InertConfig; any other pickled object still makes the load fail ("refusing to load").
INERT_GLOBALS = [_inert("yacs.config", "CfgNode"), _inert("argparse", "Namespace")]
HUB_FILE = "model.safetensors"


def read_checkpoint(path) -> dict:
    """Load a checkpoint file into a dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot read checkpoint {path}: corrupt safetensors file ({first_line(e)})") from None
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol chatter is not the user's problem
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(INERT_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        full = str(e)
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global:?)\s*(?:GLOBAL\s*)?([\w.]+)", full)
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it holds a pickled Python object ({found.group(1)}), and "
                f"loading it could run arbitrary code; only tensors, plain containers and numbers "
                f"are loaded") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", full)
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt file "
                              f"({detail.group(1).strip() if detail else first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways (struct, zip, EOF...) on damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a PyTorch checkpoint "
                              f"({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def extract_state_dict(obj: dict) -> Dict[str, torch.Tensor]:
    """Unwrap {'model': sd} / {'state_dict': sd} / {'model_ema': ...}; strip 'module.' prefixes."""
    for key in ("model", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint holds no tensors (expected a model state dict)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def official_to_timm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the official release's keys to timm's (= ours). Other layouts pass through."""
    if "downsample_layers.0.conv1.weight" not in sd:
        return sd
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
        k = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        if k.startswith("norm."):                      # norm after pooling lives in the head
            k = "head." + k
        elif k.startswith("head."):
            k = (k.replace("head.fc1.", "head.pre_logits.fc.")
                  .replace("head.norm.", "head.pre_logits.norm.")
                  .replace("head.fc2.", "head.fc."))
        out[k] = v
    return out


def classifier_keys(model: nn.Module):
    """The state-dict keys of `model`'s classifier (timm's get_classifier(): head.fc for
    MambaOut, head for VMamba and the isotropic models); head.fc's without one."""
    get = getattr(model, "get_classifier", None)
    fc = get() if get is not None else None
    for name, module in model.named_modules():
        if fc is not None and module is fc and name:
            return (f"{name}.weight", f"{name}.bias")
    return CLASSIFIER_KEYS


def fit_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load `sd` into `model` strictly, except that a classifier of another class count is
    re-initialised (and reported). Raises CheckpointError naming the first bad key. A model
    with an `adapt_state_dict(sd)` method first fits the checkpoint to itself (Vim: its position
    embedding resampled to the model's input grid)."""
    sd = official_to_timm(sd)
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        sd = adapt(sd)
    own = model.state_dict()
    info = {"reinit_classifier": False}

    # A different class count: keep the backbone, start a fresh classifier.
    fc_keys = classifier_keys(model)
    ckpt_fc = sd.get(fc_keys[0])
    own_fc = own.get(fc_keys[0])
    if ckpt_fc is not None and (own_fc is None or own_fc.shape != ckpt_fc.shape):
        for k in fc_keys:
            sd.pop(k, None)
        if own_fc is not None:
            info["reinit_classifier"] = True
            log.warning("%s has a %d-class classifier, the model has %d classes: loaded the backbone "
                        "and re-initialised the classifier", source, ckpt_fc.shape[0], own_fc.shape[0])

    # A different number of input channels: adapt the first conv like timm does.
    stem_w, own_stem = sd.get("stem.conv1.weight"), own.get("stem.conv1.weight")
    if stem_w is not None and own_stem is not None and stem_w.shape[1] != own_stem.shape[1] \
            and stem_w.shape[0] == own_stem.shape[0]:
        from timm.models import adapt_input_conv
        sd["stem.conv1.weight"] = adapt_input_conv(own_stem.shape[1], stem_w)
        log.warning("%s: adapted stem.conv1 from %d to %d input channels", source,
                    stem_w.shape[1], own_stem.shape[1])

    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(
                f"{source} does not fit the model: '{k}' has shape {tuple(v.shape)} in the "
                f"checkpoint but {tuple(own[k].shape)} in the model (is it another variant?)")
    missing = [k for k in own if k not in sd and not (info["reinit_classifier"] and k in fc_keys)]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: '{unexpected[0]}')")
        raise CheckpointError(f"{source} does not fit the model: " + ", ".join(parts)
                              + f" (is it a checkpoint of this variant, {type(model).__name__}?)")
    model.load_state_dict(sd, strict=not info["reinit_classifier"])
    return info


def load_checkpoint(model: nn.Module, path, strict_classes: bool = False) -> dict:
    """Load weights from `path` into `model` (timm or official layout, any wrapper).

    Returns the checkpoint's other top-level entries (e.g. class names, recipe) plus
    'reinit_classifier'. With strict_classes=True a class-count mismatch is an error.
    """
    obj = read_checkpoint(path)
    sd = official_to_timm(extract_state_dict(obj))
    fc = classifier_keys(model)[0]
    if strict_classes and fc in sd and fc in model.state_dict():
        a, b = sd[fc].shape[0], model.state_dict()[fc].shape[0]
        if a != b:
            raise CheckpointError(f"checkpoint {path} has {a} classes, the model has {b}")
    info = fit_state_dict(model, sd, source=f"checkpoint {path}")
    meta = {k: v for k, v in obj.items() if not isinstance(v, (dict, torch.Tensor))} if "model" in obj else {}
    meta.update(info)
    return meta


# ---- pretrained weights from the Hugging Face hub (timm/<name>.<tag>) ----------------------

def local_weights_dir() -> Path:
    return Path(os.environ.get("MAMBAOUT_WEIGHTS_DIR", Path.home() / ".cache" / "mambaout"))


def hub_url(name: str, tag: str) -> str:
    return f"https://huggingface.co/timm/{name}.{tag}/resolve/main/{HUB_FILE}"


def fetch_pretrained(name: str, tag: str, cache_dir=None) -> Path:
    """Path to the weights for timm/<name>.<tag>: our local folder, the HF cache (or
    `cache_dir`, in huggingface_hub's layout), or a download."""
    local = local_weights_dir() / f"{name}.{tag}.safetensors"
    if local.exists() and cache_dir is None:
        return local
    try:
        return _hub_download(f"timm/{name}.{tag}", HUB_FILE, cache_dir)
    except Exception as e:  # offline, hub down, repo missing: all end the same way for the user
        raise CheckpointError(
            f"pretrained weights for {name}.{tag} are not cached and could not be downloaded "
            f"({type(e).__name__}); download {hub_url(name, tag)} and save it as {local} "
            f"(or pass --checkpoint FILE)") from None


def hub_file(repo_id: str, filename: str = HUB_FILE, cache_dir=None) -> Path:
    """A file of a hub repository from huggingface_hub's cache (or `cache_dir`), downloaded
    there if absent; one-line CheckpointError offline or when the repo lacks it."""
    try:
        return _hub_download(repo_id, filename, cache_dir)
    except Exception as e:
        where = f" in {cache_dir}" if cache_dir is not None else ""
        raise CheckpointError(f"{repo_id}/{filename} is not cached{where} and could not be "
                              f"downloaded ({type(e).__name__})") from None


def url_file(url: str, cache_dir=None) -> Path:
    """A url's file in `cache_dir` (default: torch.hub's checkpoints folder), downloaded if absent;
    read afterwards like any checkpoint (no arbitrary unpickling)."""
    import torch.hub
    from urllib.parse import urlparse
    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(urlparse(url).path).name
    if not path.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as e:
            raise CheckpointError(f"weights {url} are not cached in {folder} and could not be "
                                  f"downloaded ({type(e).__name__})") from None
    return path


def _hub_download(repo_id: str, filename: str, cache_dir=None) -> Path:
    """The cached file, else a download (after a quick reachability check, so that offline
    machines fail at once instead of retrying); raises whatever went wrong."""
    from huggingface_hub import hf_hub_download
    where = {} if cache_dir is None else {"cache_dir": cache_dir}     # default: huggingface_hub's cache
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True, **where))
    except Exception:
        pass
    if not _hub_reachable():
        raise ConnectionError("hub unreachable")
    from huggingface_hub.utils import logging as hf_logging
    hf_logging.set_verbosity_error()       # no retry chatter: one line is the contract
    return Path(hf_hub_download(repo_id, filename, etag_timeout=10, **where))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap check before a download, so that offline machines fail at once instead of
    after huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def inflate_kernel(weight: torch.Tensor, time: int) -> torch.Tensor:
    """A 2D kernel (out, in, kh, kw) as a 3D one (out, in, time, kh, kw): zeros except the centre
    slice (index time // 2), which holds the 2D kernel (VideoMamba's inflate_weight(center=True));
    on a clip of identical frames the 3D conv then gives what the 2D conv gives on one frame."""
    out = weight.new_zeros(weight.shape[0], weight.shape[1], time, *weight.shape[2:])
    out[:, :, time // 2] = weight
    return out
