"""Compression for the on-device student (training side): fake quantization (STE) with an
absolute-cosine regularizer, gradual magnitude pruning, and Lightning callbacks that drive them in
any stage. The result's contract is :class:`edgeasr.quantspec.CompressionSpec`."""

from .actquant import (activation_spec, attach_activation_quant, calibrate, detach_activation_quant, float_view,
                       is_quantized, quant_points, restore_fake_quant)
from .prune import cubic_sparsity, global_masks, layer_mask, prune_masks
from .quant import acos_penalty, fake_quant, grid_distance
from .wrap import Compression, weight_targets

__all__ = ["Compression", "activation_spec", "attach_activation_quant", "calibrate", "detach_activation_quant",
           "float_view", "is_quantized", "quant_points", "restore_fake_quant", "acos_penalty", "cubic_sparsity",
           "fake_quant", "global_masks", "grid_distance", "layer_mask", "prune_masks", "weight_targets"]
