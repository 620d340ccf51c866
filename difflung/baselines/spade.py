"""SPADE (Park et al., CVPR 2019) for one-channel CT from a one-hot label mask.

Generator: the SPADE ResNet generator without the VAE encoder. The mask, resized (nearest) to the start
resolution s0, goes through a 3x3 conv to 16*width channels; then SPADE residual blocks with nearest 2x
upsampling between them; leaky ReLU, 3x3 conv to one channel, tanh. Every normalisation is a parameter-free
BatchNorm modulated per pixel by gamma/beta predicted from the mask (spatially-adaptive normalisation), with
spectral norm on the residual-block convolutions.

The original starts from 8x8 at 256x256 (5 upsamplings, s0 = S / 32) with block widths
16,16,16,8,4,2,1 x width (head, two middle blocks, four up blocks). Here s0 = max(4, S / 32) and the number of
upsamplings U = log2(S / s0) (3 at 32, 4 at 64, 5 at 128 and 256); the head and middle blocks have width
`width * 2**min(U - 1, 4)` and each later block halves it, so S = 256 gives the original.

Discriminator: two PatchGANs (full and half resolution, 3x3 average-pool between them) on (mask, image),
spectral norm + instance norm, returning every intermediate feature map for feature matching. The original
uses 4 layers per PatchGAN at 256; `disc_layers(size)` uses 3 at 128 and 2 at <= 64.

Loss: hinge GAN + 10 * discriminator feature matching, and 10 * VGG19 perceptual loss ONLY when a path to
VGG19 weights is given (`VGGLoss(path)`): off by default, since ImageNet weights cannot be downloaded here and
nothing may fetch them at run time. Adam with TTUR: G 1e-4, D 4e-4, betas (0, 0.9).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


def start_size(image_size: int) -> int:
    """Resolution the generator starts from (8 at 256 as in the original; at least 4)."""
    if image_size < 16 or 2 ** int(math.log2(image_size)) != image_size:
        raise ValueError(f"SPADE generator needs a power-of-two image size >= 16, got {image_size}")
    return max(4, image_size // 32)


def disc_layers(image_size: int) -> int:
    """Layers per PatchGAN: 4 (the original) at >= 256, 3 at 128, 2 below."""
    return 4 if image_size >= 256 else 3 if image_size >= 128 else 2


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: BatchNorm without affine, then x * (1 + gamma(m)) + beta(m)."""

    def __init__(self, channels: int, mask_channels: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(mask_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="nearest")  # (N, K, h, w)
        h = self.shared(mask)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """Residual block: SPADE -> lrelu -> conv3x3, twice; learned 1x1 shortcut (with SPADE) when widths differ."""

    def __init__(self, cin: int, cout: int, mask_channels: int, hidden: int):
        super().__init__()
        cmid = min(cin, cout)
        self.norm_0, self.conv_0 = SPADE(cin, mask_channels, hidden), nn.Conv2d(cin, cmid, 3, padding=1)
        self.norm_1, self.conv_1 = SPADE(cmid, mask_channels, hidden), nn.Conv2d(cmid, cout, 3, padding=1)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s, self.conv_s = SPADE(cin, mask_channels, hidden), nn.Conv2d(cin, cout, 1, bias=False)

    def sn_convs(self):
        return [self.conv_0, self.conv_1] + ([self.conv_s] if self.learned_shortcut else [])

    def forward(self, x, mask):
        s = self.conv_s(self.norm_s(x, mask)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, mask), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, mask), 0.2))
        return s + dx


class SPADEGenerator(nn.Module):
    """One-hot mask (N, K, S, S) -> image (N, out_channels, S, S) in [-1, 1].

    Args:
        in_channels: number of mask classes K.
        out_channels: image channels (1 for CT).
        image_size: S, a power of two >= 16.
        width: channels of the last block (nf, 64 in the original).
        hidden: channels of the SPADE modulation MLP (128 in the original).
    """

    def __init__(self, in_channels: int, out_channels: int = 1, image_size: int = 256, width: int = 64,
                 hidden: int = 128, init_gain: float = 0.02):
        super().__init__()
        self.s0 = start_size(image_size)
        n_up = int(math.log2(image_size // self.s0))
        top = width * 2 ** min(n_up - 1, 4)
        self.fc = nn.Conv2d(in_channels, top, 3, padding=1)
        self.head = SPADEResBlock(top, top, in_channels, hidden)  # at s0
        # after upsampling k (1..n_up): two blocks at `top` for k = 1 (the middle), then halve towards `width`
        widths = [top, top, top] + [max(width, top // 2 ** k) for k in range(1, n_up)]
        self.blocks = nn.ModuleList(SPADEResBlock(a, b, in_channels, hidden) for a, b in zip(widths[:-1], widths[1:]))
        self.up_before = [True, False] + [True] * (n_up - 1)  # which blocks follow a 2x upsampling
        self.conv_img = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        xavier_init(self, init_gain)
        for blk in [self.head, *self.blocks]:
            for conv in blk.sn_convs():
                spectral_norm(conv)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        x = self.fc(F.interpolate(mask, size=(self.s0, self.s0), mode="nearest"))  # (N, top, s0, s0)
        x = self.head(x, mask)
        for up, blk in zip(self.up_before, self.blocks):
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = blk(x, mask)  # (N, c, h, w), h doubling to S
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))  # (N, 1, S, S)


class PatchFeatures(nn.Module):
    """SPADE's PatchGAN (4x4 convs, spectral + instance norm) returning all intermediate outputs."""

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 4):
        super().__init__()
        convs = [nn.Conv2d(in_channels, width, 4, 2, 2)]
        c = width
        for n in range(1, n_layers):
            c_next = min(c * 2, 512)
            convs.append(nn.Conv2d(c, c_next, 4, 1 if n == n_layers - 1 else 2, 2))
            c = c_next
        convs.append(nn.Conv2d(c, 1, 4, 1, 2))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(nn.InstanceNorm2d(conv.out_channels) for conv in convs[1:-1])

    def sn_convs(self):
        return list(self.convs[1:-1])

    def forward(self, x) -> list[torch.Tensor]:
        feats = [F.leaky_relu(self.convs[0](x), 0.2)]
        for conv, norm in zip(self.convs[1:-1], self.norms):
            feats.append(F.leaky_relu(norm(conv(feats[-1])), 0.2))
        feats.append(self.convs[-1](feats[-1]))  # (N, 1, P, P) logits
        return feats


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on the input at full, 1/2, ... resolution: -> list (per scale) of feature lists.

    Args:
        in_channels: K mask channels + image channels.
        width: ndf (64 in the original); n_layers: layers per PatchGAN; num_d: scales (2 in the original).
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 4, num_d: int = 2, init_gain: float = 0.02):
        super().__init__()
        self.nets = nn.ModuleList(PatchFeatures(in_channels, width, n_layers) for _ in range(num_d))
        xavier_init(self, init_gain)
        for net in self.nets:
            for conv in net.sn_convs():
                spectral_norm(conv)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


def xavier_init(module: nn.Module, gain: float = 0.02) -> None:
    """The original's init (xavier normal, gain 0.02, zero bias); global RNG: call inside `rng_scope`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------------
# the optional VGG19 perceptual loss

_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_VGG_TAPS = (1, 6, 11, 20, 29)  # indices (torchvision's vgg19.features) of relu1_1 .. relu5_1
_VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def vgg19_features() -> nn.Sequential:
    """VGG19 conv layers laid out as torchvision's `vgg19().features` up to relu5_1 (random weights)."""
    layers, c = [], 3
    for v in _VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers[: _VGG_TAPS[-1] + 1])


class VGGLoss(nn.Module):
    """SPADE's perceptual loss: sum_i w_i * L1(VGG_i(fake), VGG_i(real)) at relu1_1..relu5_1.

    Args:
        weights_path: a safetensors file (or a `.pth` read with weights_only=True) holding torchvision's
            VGG19 state dict (`features.N.weight/bias`, or the same keys without `features.`). Nothing is
            downloaded: without this file the loss cannot be used.
    """

    def __init__(self, weights_path):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG19 weights not found. The SPADE perceptual loss is off unless you "
                                    f"supply torchvision-layout VGG19 weights (safetensors) at this path")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        self.features = vgg19_features()
        wanted = self.features.state_dict().keys()
        missing = sorted(set(wanted) - set(state))
        if missing:
            raise ValueError(f"{path}: not a VGG19 state dict (missing {missing[:4]}...)")
        self.features.load_state_dict({k: state[k] for k in wanted})
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _taps(self, x):
        # grey [-1, 1] -> ImageNet-normalised RGB, the statistics the weights were trained on (the original
        # feeds [-1, 1] RGB unnormalised)
        x = ((x.expand(-1, 3, -1, -1) + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                out.append(x)
        return out

    def forward(self, fake, real):
        return sum(w * F.l1_loss(a, b.detach()) for w, a, b in zip(_VGG_WEIGHTS, self._taps(fake), self._taps(real)))


# ---------------------------------------------------------------------------------------------------------------
# training

def optimizers(G: nn.Module, D: nn.Module, lr_g: float = 1e-4, lr_d: float = 4e-4, betas=(0.0, 0.9)):
    """Adam with the two-time-scale update rule of the original."""
    return (torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas),
            torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas))


def _discriminate(D, mask, fake, real):
    """D on fake and real in one batch (as the original, so that norm statistics are shared) -> (fake, real)."""
    out = D(torch.cat([torch.cat([mask, fake], 1), torch.cat([mask, real], 1)], 0))
    n = len(mask)
    return [[f[:n] for f in scale] for scale in out], [[f[n:] for f in scale] for scale in out]


def train_step(G, D, opt_g, opt_d, mask: torch.Tensor, real: torch.Tensor, *, lambda_feat: float = 10.0,
               lambda_vgg: float = 10.0, vgg: VGGLoss | None = None) -> dict:
    """One SPADE iteration in the original's order: G update, then D update on a regenerated fake.

    Args:
        mask: one-hot condition (N, K, S, S); real: target images (N, 1, S, S) in [-1, 1].
        vgg: the perceptual loss, or None (default: off).
    Returns the losses as floats.
    """
    # generator: hinge -mean D(fake), averaged over scales, + feature matching (+ VGG)
    D.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    fake = G(mask)
    pf, pr = _discriminate(D, mask, fake, real)
    g_gan = sum(-s[-1].mean() for s in pf) / len(pf)
    g_feat = sum(F.l1_loss(a, b.detach()) for sf, sr in zip(pf, pr) for a, b in zip(sf[:-1], sr[:-1]))
    g_feat = g_feat * lambda_feat / len(pf)
    loss = g_gan + g_feat
    logs = {}
    if vgg is not None:
        g_vgg = vgg(fake, real) * lambda_vgg
        loss = loss + g_vgg
        logs["g_vgg"] = g_vgg.item()
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    # discriminator: hinge mean relu(1 - D(real)) + mean relu(1 + D(fake)), each averaged over scales
    opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = G(mask)
    pf, pr = _discriminate(D, mask, fake, real)
    d_fake = sum(F.relu(1 + s[-1]).mean() for s in pf) / len(pf)
    d_real = sum(F.relu(1 - s[-1]).mean() for s in pr) / len(pr)
    (d_fake + d_real).backward()
    opt_d.step()
    return {"d_real": d_real.item(), "d_fake": d_fake.item(), "g_gan": g_gan.item(), "g_feat": g_feat.item(), **logs}
