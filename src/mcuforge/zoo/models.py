"""The zoo's architectures (PyTorch modules, exportable by mcuforge's torch frontend)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .sinc import LogCompression, SincConv1d


# --- SincConv KWS (Mittermaier et al.) ---------------------------------------------------------------

class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written channel-last (N, L, C) so that it converts to a single transpose on the MCU.
        n, c, length = x.shape
        y = x.transpose(1, 2).reshape(n, length, self.groups, c // self.groups).transpose(2, 3)
        return y.reshape(n, length, c).transpose(1, 2)


class GDSConvBlock(nn.Module):
    """Grouped depthwise-separable 1-D block: depthwise conv, grouped pointwise conv, BN, ReLU,
    average pooling, dropout, channel shuffle (so that the next grouped conv mixes groups)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, pool: int = 2,
                 dropout: float = 0.1, shuffle: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv1d(cin, cin, kernel, stride=stride, groups=cin, bias=False),
            nn.Conv1d(cin, cout, 1, groups=groups, bias=False),
            nn.BatchNorm1d(cout), nn.ReLU(),
        ]
        if pool > 1:
            layers.append(nn.AvgPool1d(pool))
        layers.append(nn.Dropout(dropout))
        if shuffle and groups > 1:
            layers.append(ChannelShuffle(groups))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class SincKWS(nn.Module):
    """Raw 16 kHz audio (N, 1, 16000) -> class logits. SincConv (40 band-pass filters of 101
    taps, stride 8), log compression, BN, average pooling, five grouped DS-conv blocks of 162
    channels, global average pooling, linear: about 62k parameters."""

    def __init__(self, n_classes: int = 12, channels: int = 162, filters: int = 40, sample_rate: int = 16000,
                 groups: tuple[int, ...] = (2, 2, 2, 2, 3), kernels: tuple[int, ...] = (25, 9, 9, 9, 9),
                 eps: float = 0.01) -> None:
        super().__init__()
        self.sinc = SincConv1d(filters, 101, sample_rate, stride=8)
        self.front = nn.Sequential(LogCompression(eps), nn.BatchNorm1d(filters), nn.AvgPool1d(2))
        blocks, cin = [], filters
        for i, (g, k) in enumerate(zip(groups, kernels)):
            last = i == len(groups) - 1
            blocks.append(GDSConvBlock(cin, channels, k, stride=2 if i == 0 else 1, groups=g,
                                       pool=1 if last else 2, shuffle=not last))
            cin = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, n_classes))

    def forward(self, x):
        return self.head(self.blocks(self.front(self.sinc(x))))

    def for_export(self) -> "SincKWS":
        """In eval mode batch norm is a per-channel affine map and commutes with average pooling:
        pool first, so that the batch norm (a depthwise 1x1 conv after the log table) works on
        half the samples and the arena peak drops by a quarter. Same outputs."""
        log, bn, pool = self.front
        self.front = nn.Sequential(log, pool, bn)
        return self


# --- DS-CNN (MLPerf Tiny KWS) ------------------------------------------------------------------------

class DSCNN(nn.Module):
    """MFCC (N, 1, 49, 10) -> logits: conv 10x4/2 (64), four depthwise-separable 3x3 blocks of 64,
    average pooling, linear (the MLPerf Tiny KWS reference)."""

    def __init__(self, n_classes: int = 12, in_shape: tuple[int, int, int] = (1, 49, 10), channels: int = 64,
                 blocks: int = 4) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = [nn.Conv2d(c, channels, (10, 4), stride=2, padding=(5, 1)),
                                   nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels),
                       nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU()]
        layers += [nn.Dropout(0.2)]
        self.features = nn.Sequential(*layers)
        oh, ow = (h + 10 - 10) // 2 + 1, (w + 2 - 4) // 2 + 1
        self.head = nn.Sequential(nn.AvgPool2d((oh, ow)), nn.Flatten(), nn.Linear(channels, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


# --- ResNet-8 (MLPerf Tiny image classification) --------------------------------------------------------

class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class ResNet8(nn.Module):
    """(N, 3, 32, 32) -> logits: conv 16, residual stacks of 16, 32 (stride 2), 64 (stride 2),
    global average pooling, linear (the MLPerf Tiny reference, ~78k parameters)."""

    def __init__(self, n_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.stacks = nn.Sequential(_ResBlock(16, 16, 1), _ResBlock(16, 32, 2), _ResBlock(32, 64, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.head(self.stacks(self.stem(x)))


# --- FC autoencoder (MLPerf Tiny anomaly detection) -----------------------------------------------------

class FCAutoencoder(nn.Module):
    """640-128-128-128-128-8-128-128-128-128-640, BN + ReLU after every layer but the last."""

    def __init__(self, dim: int = 640, hidden: int = 128, code: int = 8) -> None:
        super().__init__()
        sizes = [dim, hidden, hidden, hidden, hidden, code, hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


# --- ECG 1-D CNN -----------------------------------------------------------------------------------------

class ECGCNN(nn.Module):
    """(N, 1, L) ECG window -> rhythm logits: four 1-D conv blocks, global average pooling, linear."""

    def __init__(self, n_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()

        def block(cin, cout, k, stride=1, pool=2):
            layers = [nn.Conv1d(cin, cout, k, stride, k // 2), nn.BatchNorm1d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool1d(pool)] if pool > 1 else [])

        self.features = nn.Sequential(*block(in_channels, 16, 7, 2), *block(16, 32, 5), *block(32, 64, 5),
                                      *block(64, 64, 3, pool=1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


# --- motor temperature temporal-conv regressor ------------------------------------------------------------

class MotorTCN(nn.Module):
    """(N, 8, W) signal windows -> (N, 2) temperatures: a temporal conv, three strided temporal
    convs, flatten, two linear layers (recurrent layers are not needed)."""

    def __init__(self, n_out: int = 2, in_channels: int = 8, window: int = 64, channels: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(in_channels, channels, 5, 1, 2), nn.BatchNorm1d(channels), nn.ReLU()]
        length = window
        for _ in range(3):
            layers += [nn.Conv1d(channels, channels, 5, 2, 2), nn.BatchNorm1d(channels), nn.ReLU()]
            length = (length + 4 - 5) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * length, 32), nn.ReLU(), nn.Linear(32, n_out))

    def forward(self, x):
        return self.head(self.features(x))
