"""Shared test helpers."""
import re


def timm_to_official(sd):
    """Inverse of the official -> timm renaming, written independently for the tests."""
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem."):]
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        if k.startswith("head.norm."):
            k = k[len("head."):]
        k = k.replace("head.pre_logits.fc.", "head.fc1.").replace("head.pre_logits.norm.", "head.norm.")
        k = k.replace("head.fc.", "head.fc2.")
        out[k] = v
    return out
