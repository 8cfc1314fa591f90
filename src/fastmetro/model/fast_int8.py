"""The lossy CPU path in PyTorch: the backbone in static int8, calibrated, compiled by TorchInductor.

:class:`Int8Backbone` takes ``backbone.forward_features`` through PyTorch's export-based (pt2e)
quantisation with torchao's ``X86InductorQuantizer``: int8 weights with one scale per output
channel, uint8 activations whose ranges are observed on calibration images, then
``torch.compile`` with weight freezing lowers every quantised convolution (with its ReLU / residual
add) to one oneDNN int8 kernel (VNNI or AMX on x86). It is compiled for one image of the
calibration size and runs a batch image by image: TorchInductor cannot freeze the int8 weights
of a graph with a dynamic batch (``onednn.qconv_prepack`` is unsupported there), and one compile
serves every batch size.
:func:`fastmetro.model.fast.prepare_for_inference` uses it with ``int8_calibration=``; everything
after the backbone is the fp32 fast path.

It is a snapshot: the int8 weights are the backbone's at quantisation time, and a call after the
backbone's weights changed is an error (quantise again). Needs ``pip install 'fastmetro[int8]'``
(torchao) and a C++ compiler (TorchInductor's CPU backend). Quantising and compiling take 10-30 s.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.model.fast_backbone import _Features
from fastmetro.model.fast_transformer import _fingerprint


def _quantised(features: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """pt2e: export for one image, insert observers, run the calibration images, convert."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise FastMetroError("the int8 path needs torchao (pip install 'fastmetro[int8]')") from None
    exported = torch.export.export(features, (calibration[:1],)).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for image in calibration:  # observe the activation ranges
        prepared(image[None])
    return convert_pt2e(prepared)


class Int8Backbone:
    """A backbone's ``forward_features`` in static int8 (see the module docstring).

    Args:
        backbone: the model's backbone (a timm-style module with ``forward_features``), eval mode.
        calibration: (N, 3, S, S) float32 images normalised like the model's inputs, N >= 1:
            crops of the people the model will see (the ranges are their min/max).
    """

    def __init__(self, backbone: nn.Module, calibration: torch.Tensor):
        if calibration.ndim != 4 or calibration.shape[1] != 3 or not len(calibration):
            shape = tuple(calibration.shape)
            raise FastMetroError(f"int8 calibration images must be (N, 3, S, S) with N >= 1, got {shape}")
        device = next(backbone.parameters()).device
        if device.type != "cpu":
            raise FastMetroError(f"the int8 path runs on the CPU; the backbone is on {device}")
        self.backbone = backbone
        self._key = _fingerprint(list(backbone.parameters()) + list(backbone.buffers()))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # export / quantisation notices
            quantised = _quantised(_Features(backbone).eval(), calibration.float().cpu())
            self._run = torch.compile(quantised, dynamic=False)
            from torch._inductor import config as inductor_config  # (TorchInductor's, loaded on demand)

            # Freezing folds the int8 weights into packed constants; compile now (outside
            # inference mode, where TorchInductor would not freeze them).
            with inductor_config.patch(freezing=True):
                self._run(calibration[:1].float().cpu())
        self._image_shape = tuple(calibration.shape[1:])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if _fingerprint(list(self.backbone.parameters()) + list(self.backbone.buffers())) != self._key:
            raise FastMetroError("int8 backbone: the model's weights changed since it was quantised; quantise again")
        if tuple(images.shape[1:]) != self._image_shape:
            raise FastMetroError(
                f"int8 backbone: quantised for images {self._image_shape}, got {tuple(images.shape[1:])}"
            )
        # The grad mode it was compiled in: another (the fast view's inference mode) would make
        # TorchInductor compile a second, unfrozen graph running fp32 convolutions.
        with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
            return torch.cat([self._run(image[None]) for image in images.float()])
