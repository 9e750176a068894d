"""The hierarchical MambaOut: stem, four stages of Gated CNN blocks, MLP head.

Interface: the contract timm holds its own models to (timm 1.0, timm/models/mambaout.py):
forward_features, forward_head, forward_intermediates, prune_intermediate_layers,
feature_info, get_classifier / reset_classifier, set_grad_checkpointing, group_matcher,
no_weight_decay, pretrained_cfg with its `default_cfg` alias. The model also FX-traces
(torchvision / timm feature extractors), scripts, exports (torch.export), deep-copies and
pickles, and runs under torch.inference_mode and on the meta device: under scripting and
FX tracing every block takes the plain-op reference path (blocks.py), equal to the fast one.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from torch.utils.checkpoint import checkpoint

from .blocks import (ACTIVATIONS, DefaultCfgAlias, Downsample, GatedCNNBlock, MlpHead, MlpHeadClassifier, StagedModel, Stem,
                     nhwc_to_nchw, stage_indices)
from .fast import _compiling, fx_tracing, raise_malloc_thresholds
from .hybrid import stage_block_kwargs


def _exporting() -> bool:
    try:
        return torch.compiler.is_exporting()
    except AttributeError:  # older torch
        return False


def _eager_features(model, x):
    return model._features(x)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "disable"):
    _eager_features = torch.compiler.disable(_eager_features)


class MambaOutStage(nn.Module):
    def __init__(self, dim, dim_out, depth, downsample=None, drop_path=(), block_fn=GatedCNNBlock,
                 **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        if downsample is None:
            assert dim == dim_out
            self.downsample = nn.Identity()
        else:
            self.downsample = Downsample(dim, dim_out, norm_first=downsample == "conv_nf")
        self.blocks = nn.Sequential(*[block_fn(dim_out, drop_path=drop_path[j], **block_kwargs)
                                      for j in range(depth)])

    def forward(self, x):
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class MambaOut(DefaultCfgAlias, StagedModel, MlpHeadClassifier, nn.Module):
    """MambaOut image classifier / backbone.

    Args:
        depths, dims: blocks and channels per stage.
        expansion_ratio, kernel_size, conv_ratio, ls_init_value: Gated CNN block options.
        stem_mid_norm: LayerNorm between the two stem convs (paper: yes; `_rw`: no).
        downsample: "conv" (conv -> norm, paper) or "conv_nf" (norm -> conv, `_rw`).
        head: "mlp" (paper head with a norm inside the MLP) or "norm_mlp" (`_rw`).
        act: activation of the blocks and stem ("gelu", "gelu_tanh", "silu"); the head uses GELU.
        drop_path_rate: peak stochastic depth, linearly increasing over all blocks.
        drop_rate: dropout before the classifier.
        stage_mixers: per stage, a second token mixer after the conv: "" (none, MambaOut),
            "attn" or "ssm" (Table 7's hybrids, see hybrid.py).
    """

    def __init__(self, in_chans=3, num_classes=1000, depths=(3, 3, 9, 3), dims=(96, 192, 384, 576),
                 expansion_ratio=8 / 3, kernel_size=7, conv_ratio=1.0, ls_init_value=None,
                 stem_mid_norm=True, downsample="conv", head="mlp", act="gelu",
                 drop_path_rate=0.0, drop_rate=0.0, global_pool="avg", block_fn=GatedCNNBlock,
                 stage_mixers=("", "", "", "")):
        super().__init__()
        if head not in ("mlp", "norm_mlp"):
            raise ValueError(f"head must be 'mlp' or 'norm_mlp', got {head!r}")
        if downsample not in ("conv", "conv_nf"):
            raise ValueError(f"downsample must be 'conv' or 'conv_nf', got {downsample!r}")
        if len(stage_mixers) != len(depths):
            raise ValueError(f"stage_mixers needs one entry per stage ({len(depths)}), got {stage_mixers!r}")
        act_layer = ACTIVATIONS[act]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.stem = Stem(in_chans, dims[0], mid_norm=stem_mid_norm, act_layer=act_layer)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.Sequential()
        self.feature_info = []
        prev_dim, start = dims[0], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.stages.append(MambaOutStage(
                prev_dim, dim, depth, downsample=downsample if i > 0 else None,
                drop_path=rates[start:start + depth], block_fn=block_fn,
                expansion_ratio=expansion_ratio, kernel_size=kernel_size, conv_ratio=conv_ratio,
                ls_init_value=ls_init_value, act_layer=act_layer,
                **stage_block_kwargs(stage_mixers[i], dim, expansion_ratio)))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
            prev_dim, start = dim, start + depth

        self.num_features = prev_dim
        # The head's MLP uses GELU in every released model, whatever the blocks use.
        self.head = MlpHead(prev_dim, num_classes, mid_norm=head == "mlp", act_layer=nn.GELU,
                            drop_rate=drop_rate, global_pool=global_pool)
        self.head_hidden_size = self.head.num_features
        # Keys are timm PretrainedCfg fields (create_model fills it from registry.pretrained_cfg).
        self.pretrained_cfg: dict = {}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not getattr(m, "_keep_init", False):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm-style backbone interface -------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters trained without weight decay beyond timm's default (which already spares
        every 1-d parameter: norms, biases, layer scales): the SSM's A_log and D in Table 7's
        VMamba-Mixed-Stage model, as Mamba does (its `_no_weight_decay` marks); none in MambaOut."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in ("A_log", "D")}

    # CPU inference runs the batch in slices whose largest activation stays under this many
    # bytes. glibc mmaps every allocation above 32 MiB and the kernel page-faults it on each call,
    # which on CPU costs about as much as the GEMM that fills it. Every op is per sample, so
    # the outputs are the same; None switches slicing off.
    cpu_slice_bytes: Optional[int] = 30 * 2**20

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> NHWC feature map at stride 32."""
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return self.stages(self.stem(x))
        if fx_tracing(x):  # a Proxy cannot steer the slicing below; blocks take plain ops
            return self.stages(self.stem(x))
        if x.device.type == "cpu" and not torch.is_grad_enabled() and _compiling() and not _exporting():
            # CPU inference under torch.compile: our fused eager plan beats inductor's code for
            # this model (docs/performance.md), so the compiled graph calls it as is.
            return _eager_features(self, x)
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        step = self._cpu_slice(x)
        if step:  # only the stem and stage 1 hold tensors that large; later stages run whole
            x = torch.cat([self.stages[0](self.stem(part)) for part in x.split(step)])
            return self.stages[1:](x)
        return self.stages(self.stem(x))

    def _cpu_slice(self, x) -> int:
        # Also under torch.compile (static shapes), but never under jit tracing / ONNX export,
        # which would bake the slice sizes into the graph.
        if (self.cpu_slice_bytes is None or fx_tracing(x) or x.device.type != "cpu" or x.dim() != 4
                or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return 0
        pixels = x.shape[2] * x.shape[3]
        widest = self.stem.conv1.out_channels * pixels / 4           # stem conv1 at stride 2
        for stage in self.stages[:1]:
            for blk in stage.blocks:
                hidden, ident, cc = getattr(blk, "split_indices", (0, 0, 0))
                widest = max(widest, (hidden + ident) * pixels / 16)  # stage 1 at stride 4
        if not _compiling():
            raise_malloc_thresholds()                   # once per process: see fast.py
        per_slice = max(1, int(self.cpu_slice_bytes // (x.element_size() * widest)))
        if per_slice >= x.shape[0]:
            return 0
        slices = -(-x.shape[0] // per_slice)           # as few slices as possible, evenly sized
        return -(-x.shape[0] // slices)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Feature maps after the stages in `indices` (strides 4, 8, 16, 32).

        indices: None = all stages, an int n = the last n, or a list of stage indices
        (negative allowed). output_fmt "NCHW" or "NHWC". Returns (final features,
        intermediates) or only the intermediates. `norm` is accepted for timm
        compatibility; MambaOut has no norm after the last stage, so it does nothing.
        stop_early: skip the stages after the last one taken (then the final features
        returned are those of that stage).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = self._take_indices(indices)
        intermediates = []
        x = self.stem(x)
        last = max(take) if stop_early else len(self.stages) - 1
        for i, stage in enumerate(self.stages[:last + 1]):
            x = stage(x)
            if i in take:
                intermediates.append(nhwc_to_nchw(x).contiguous() if output_fmt == "NCHW" else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def _take_indices(self, indices) -> List[int]:
        return stage_indices(len(self.stages), indices)

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what forward_intermediates(indices) does not need, as timm's MambaOut does:
        the stages after the last one taken and, with prune_head (or when stages were dropped:
        the head was sized for the last stage), the head's norm and MLP and its classifier.
        prune_norm is timm's argument; MambaOut has no norm outside its head, so it changes
        nothing. Returns the kept indices (non-negative)."""
        take = self._take_indices(indices)
        last = max(take)
        prune_end = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_end:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.head.norm = nn.Identity()
            self.head.pre_logits = nn.Identity()
            self.head.in_features = self.head.num_features = self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take
