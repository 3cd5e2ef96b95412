"""SincConv (SincNet band-pass filters with learnable cut-offs) and log compression.

For deployment the SincConv becomes a plain Conv1d whose weights are the band-pass
filters computed from the learned cut-offs (``SincConv1d.to_conv1d``), and
``LogCompression`` exports as ``log(abs(x) + eps)``, which the torch frontend maps to
one int8 ``log_abs`` table op.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _hz_to_mel(hz):
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10 ** (mel / 2595.0) - 1.0)


class SincConv1d(nn.Module):
    """`out_channels` band-pass filters of odd length `kernel_size`: the filter of channel i is
    the difference of two windowed sinc low-passes at its learned low and high cut-offs
    (Ravanelli & Bengio, SincNet). Cut-offs start mel-spaced; only 2 parameters per filter."""

    def __init__(self, out_channels: int = 40, kernel_size: int = 101, sample_rate: int = 16000, stride: int = 8,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("SincConv1d needs an odd kernel size")
        self.out_channels, self.kernel_size, self.stride = out_channels, kernel_size, stride
        self.sample_rate, self.min_low_hz, self.min_band_hz = sample_rate, min_low_hz, min_band_hz
        high = sample_rate / 2 - (min_low_hz + min_band_hz)
        hz = _mel_to_hz(torch.linspace(_hz_to_mel(30.0), _hz_to_mel(high), out_channels + 1))
        self.low_hz_ = nn.Parameter((hz[:-1] - min_low_hz).clamp(min=0).view(-1, 1))
        self.band_hz_ = nn.Parameter((hz[1:] - hz[:-1]).view(-1, 1))
        half = kernel_size // 2
        n_lin = torch.linspace(0, kernel_size / 2 - 1, steps=half)
        self.register_buffer("window_", 0.54 - 0.46 * torch.cos(2 * math.pi * n_lin / kernel_size), persistent=False)
        self.register_buffer("n_", 2 * math.pi * torch.arange(-half, 0).float().view(1, -1) / sample_rate,
                             persistent=False)

    def cutoffs(self) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, self.sample_rate / 2)
        return low, high

    def filters(self) -> torch.Tensor:
        low, high = self.cutoffs()
        band = (high - low)[:, 0]
        left = (torch.sin(high @ self.n_) - torch.sin(low @ self.n_)) / (self.n_ / 2) * self.window_
        center = 2 * band.view(-1, 1)
        right = torch.flip(left, dims=[1])
        bp = torch.cat([left, center, right], dim=1) / (2 * band[:, None])
        return bp.view(self.out_channels, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.filters()
        if x.shape[1] == 1 and torch.is_grad_enabled():
            # the same product as conv1d; its backward is several times faster on CPU
            frames = x[:, 0].unfold(1, self.kernel_size, self.stride)  # N, L', K
            return torch.einsum("nlk,ok->nol", frames, w[:, 0])
        return F.conv1d(x, w, stride=self.stride)

    def to_conv1d(self) -> nn.Conv1d:
        conv = nn.Conv1d(1, self.out_channels, self.kernel_size, stride=self.stride, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.filters())
        return conv


class LogCompression(nn.Module):
    """y = log(|x| + eps): exported as abs, add, log -> one int8 log_abs table."""

    def __init__(self, eps: float = 0.01) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.abs(x) + self.eps)


def fix_sinc(module: nn.Module) -> nn.Module:
    """A copy of `module` in which every SincConv1d is a fixed Conv1d (for export)."""
    import copy

    module = copy.deepcopy(module)
    for name, child in list(module.named_children()):
        if isinstance(child, SincConv1d):
            setattr(module, name, child.to_conv1d())
        else:
            setattr(module, name, fix_sinc(child))
    return module
