"""Pix2Pix (Isola et al., CVPR 2017) for one-channel CT from a one-hot label mask.

Generator: the UNet of the original (4x4 stride-2 convolutions, BatchNorm, LeakyReLU 0.2 down / ReLU up,
skip connections by concatenation, dropout 0.5 in the blocks just above the bottleneck, tanh output). The
original stacks 8 downsamplings at 256x256 so that the bottleneck is 1x1; here the depth is log2(size)
(5 at 32, 6 at 64, 8 at 256) and channels are `width * min(2**level, 8)`, which is the original at 256.
The original puts dropout in the 3 inner 512-channel blocks (num_downs - 5 of them); we keep 3 dropout
blocks at every size (min(3, depth - 2)) because dropout is Pix2Pix's only source of noise.

Input: the original maps an image to an image; here the input is the one-hot mask of the dataset's classes
(K channels, `Dataset.classes` order) and the output one CT channel in [-1, 1].

Discriminator: the PatchGAN (`n_layers` stride-2 blocks, then a stride-1 block and a 1-channel stride-1
conv) on the concatenation (mask, image). n_layers = 3 gives the 70x70 receptive field of the original;
`patch_layers(size)` scales it down for small images (70 px at >= 256, 34 px at 128, 16 px at <= 64), so the
patch covers roughly a quarter of the slice side as in the original.

Loss: vanilla GAN (BCE with logits, the original's default for pix2pix) + 100 * L1; the discriminator loss is
halved as in the original. Adam 2e-4, betas (0.5, 0.999).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def unet_depth(image_size: int) -> int:
    """Number of stride-2 downsamplings so that the bottleneck is 1x1 (8 at 256)."""
    depth = int(math.log2(image_size))
    if 2 ** depth != image_size or depth < 4:
        raise ValueError(f"Pix2Pix UNet needs a power-of-two image size >= 16, got {image_size}")
    return depth


def patch_layers(image_size: int) -> int:
    """PatchGAN stride-2 layers for an image size: 3 (70x70 receptive field) at >= 256, 2 (34) at 128, 1 (16) below."""
    return 3 if image_size >= 256 else 2 if image_size >= 128 else 1


class Pix2PixGenerator(nn.Module):
    """UNet generator: one-hot mask (N, K, S, S) -> image (N, out_channels, S, S) in [-1, 1].

    Args:
        in_channels: number of mask classes K.
        out_channels: image channels (1 for CT).
        image_size: S, a power of two; sets the depth log2(S).
        width: channels of the first level (ngf, 64 in the original).
        n_dropout: blocks with dropout 0.5 above the bottleneck (default min(3, depth - 2)).
    """

    def __init__(self, in_channels: int, out_channels: int = 1, image_size: int = 256, width: int = 64,
                 n_dropout: int | None = None):
        super().__init__()
        depth = unet_depth(image_size)
        n_dropout = min(3, depth - 2) if n_dropout is None else n_dropout
        ch = [width * min(2 ** i, 8) for i in range(depth)]  # channels after down i
        self.depth, self.n_dropout = depth, n_dropout
        # No conv has a bias except the output one (the original's use_bias rule with BatchNorm); BatchNorm
        # follows every conv except the first down, the bottleneck down and the output.
        self.down = nn.ModuleList()
        for i in range(depth):
            layers = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(in_channels if i == 0 else ch[i - 1], ch[i], 4, 2, 1, bias=False))
            if 0 < i < depth - 1:
                layers.append(nn.BatchNorm2d(ch[i]))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in range(depth):
            cin = ch[i] if i == depth - 1 else 2 * ch[i]  # the bottleneck has no skip to concatenate
            if i == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                layers = [nn.ReLU(), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i - 1])]
                if depth - 1 - n_dropout <= i < depth - 1:
                    layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        skips = []
        x = mask  # (N, K, S, S)
        for down in self.down:
            x = down(x)  # (N, ch[i], S / 2^(i+1), S / 2^(i+1))
            skips.append(x)
        x = self.up[-1](skips[-1])  # bottleneck 1x1 -> 2x2
        for i in range(self.depth - 2, -1, -1):
            x = self.up[i](torch.cat([skips[i], x], dim=1))  # (N, ch[i-1] or out, S / 2^i, S / 2^i)
        return x


class PatchDiscriminator(nn.Module):
    """PatchGAN: (mask, image) concatenated (N, C, S, S) -> logits (N, 1, P, P), one per overlapping patch.

    Args:
        in_channels: K mask channels + image channels.
        width: channels of the first conv (ndf, 64 in the original).
        n_layers: stride-2 layers; 3 gives the 70x70 receptive field.
    """

    def __init__(self, in_channels: int, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for n in range(1, n_layers + 1):
            c_next = width * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, c_next, 4, stride, 1, bias=False), nn.BatchNorm2d(c_next), nn.LeakyReLU(0.2)]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def receptive_field(module: nn.Module) -> int:
    """Receptive field in pixels of a plain stack of convolutions (the PatchGAN's patch size)."""
    rf = 1
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for m in reversed(convs):
        rf = (rf - 1) * m.stride[0] + m.kernel_size[0]
    return rf


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The original's init: conv weights N(0, std), BatchNorm weights N(1, std), biases 0 (global RNG: call
    inside `difflung.baselines.gan_train.rng_scope`)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def optimizers(G: nn.Module, D: nn.Module, lr: float = 2e-4, betas=(0.5, 0.999)):
    return (torch.optim.Adam(G.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(D.parameters(), lr=lr, betas=betas))


def train_step(G, D, opt_g, opt_d, mask: torch.Tensor, real: torch.Tensor, *, lambda_l1: float = 100.0) -> dict:
    """One Pix2Pix iteration in the original's order: G forward, D update on (real, fake.detach()), G update.

    Args:
        mask: one-hot condition (N, K, S, S); real: target images (N, 1, S, S) in [-1, 1].
    Returns the losses as floats.
    """
    fake = G(mask)  # (N, 1, S, S)
    # discriminator: 0.5 * (BCE(D(real), 1) + BCE(D(fake), 0))
    opt_d.zero_grad(set_to_none=True)
    pred_fake = D(torch.cat([mask, fake.detach()], 1))
    pred_real = D(torch.cat([mask, real], 1))
    d_fake = F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
    d_real = F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
    (0.5 * (d_fake + d_real)).backward()
    opt_d.step()
    # generator: BCE(D(fake), 1) + lambda * L1, with D frozen
    D.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    pred_fake = D(torch.cat([mask, fake], 1))
    g_gan = F.binary_cross_entropy_with_logits(pred_fake, torch.ones_like(pred_fake))
    g_l1 = F.l1_loss(fake, real)
    (g_gan + lambda_l1 * g_l1).backward()
    opt_g.step()
    D.requires_grad_(True)
    return {"d_real": d_real.item(), "d_fake": d_fake.item(), "g_gan": g_gan.item(), "g_l1": g_l1.item()}
