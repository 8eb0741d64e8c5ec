"""A tiny CNN with the structures edgeopt must handle: residuals, a depthwise conv, a concat and an
attention block. Used by the tests through the `file.py:factory` model spec as well as directly."""

import torch
from torch import nn


class TinyAttention(nn.Module):
    """Self-attention over spatial positions (kept unpruned: heads must stay consistent)."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t), self.norm(t), self.norm(t), need_weights=False)[0]
        return t.transpose(1, 2).reshape(b, c, h, w)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_ch: int = 1, attention: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU(), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.attn = TinyAttention(32) if attention else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.dw(x), self.branch(x)], dim=1)  # concat: 24 + 8 channels
        x = self.attn(self.down(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make(num_classes: int = 10, attention: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(num_classes=num_classes, attention=attention).eval()


def make_plain(num_classes: int = 10) -> nn.Module:
    return make(num_classes=num_classes, attention=False)
