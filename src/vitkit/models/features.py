"""Backbone feature extraction: ``create_model(name, features_only=True, out_indices=...)``.

:class:`FeatureExtractor` wraps a built model (its weights already loaded): it prunes the
layers after the last one asked for, and the head, then its forward returns the maps of the
``out_indices`` layers, as timm's ``features_only`` models do:

    extractor(x)                    -> [ (B, C_i, H / r_i, W / r_i) for i in out_indices ]
    extractor.feature_info          -> FeatureInfoList: channels(), reduction(), module_name()

Module names are relative to the extractor (``model.blocks.3``), so
``extractor.get_submodule(name)`` is the module whose output is the feature.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vitkit.models.base import FeatureInfoList, Indices, VitkitModel


class FeatureExtractor(nn.Module):
    """A model's intermediate feature maps at ``out_indices`` (None = every ``feature_info`` layer).

    ``norm``: apply the final norm to each map (token models). ``output_fmt``: "NCHW", or "NLC"
    for token models. ``prune``: drop the unused layers and the head (the default).
    """

    def __init__(self, model: VitkitModel, out_indices: Indices = None, norm: bool = False,
                 output_fmt: str = "NCHW", prune: bool = True):
        super().__init__()
        model.check_output_fmt(output_fmt)
        if prune:
            out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.out_indices = model.take_indices(out_indices)
        self.model = model
        self.norm, self.output_fmt = norm, output_fmt
        self.feature_info = FeatureInfoList(dataclasses.replace(model.feature_info[i], module=f"model.{m}")
                                            for i, m in zip(self.out_indices, model.feature_info.module_name(
                                                self.out_indices), strict=True))

    @property
    def config(self):
        return self.model.config

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, output_fmt=self.output_fmt,
                                                intermediates_only=True)
