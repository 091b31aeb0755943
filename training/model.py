"""The VAE over a window of W ticks x C channels (PyTorch).

Inputs are scaled values ``x`` with missing entries zero-filled and the ``mask`` (1 =
observed), both [B, W, C]. The encoder reads ``(x * mask, mask)`` and gives the latent
``(mu, logvar)``; the decoder maps a latent back to a per-entry Gaussian: ``mean`` and
``logvar`` [B, W, C] (heteroscedastic, log-variance softly bounded to
``[logvar_min, logvar_max]``). ``forward`` is the deterministic inference graph (z = mu) that
is exported to ONNX; ``sample`` draws z for training.

With ``context > 0`` the decoder also gets a *blind-spot* temporal context: features at tick t
computed from the visible entries of ticks t-k..t-1 and t+1..t+k, never from tick t itself.
The latent carries the window's overall state; the context carries local detail (what a gap's
neighbours say), which a small latent cannot. Because no path copies an entry into its own
reconstruction except through the bottleneck, the likelihood of an observed entry still
measures how well the rest of the window explains it (the anomaly score).

With ``base="interp"`` the decoded mean is a correction to a *blind* neighbour estimate
computed inside the graph: per entry, linear interpolation between the channel's nearest
observed values before and after it (carry-forward / back-fill when only one side exists,
0 when neither), never the entry itself. A per-entry head sees that estimate, its distances
and, through a channel-blind linear map, the same tick's other channels (their values and
their deviation from their own estimate) -- so the newest tick's gaps are filled from the
last values and what the rest of the device does now, not from a 16-number summary alone.
A learned per-entry gate weighs the neighbour estimate against the latent's mean. Opt-in:
it fills random gaps far better but, being a good one-step predictor, it also explains
anomalies away (see ``gapwatch train --help``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VAE", "VAEConfig", "gaussian_nll", "kl_divergence"]

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class VAEConfig:
    window: int = 32
    channels: int = 8
    hidden: int = 256
    latent: int = 16
    depth: int = 2  # hidden layers in the encoder and in the decoder
    logvar_min: float = -6.0  # σ >= 0.05 in scaled units
    logvar_max: float = 3.0  # σ <= 4.5
    context: int = 0  # ticks on each side seen by the blind-spot context path (0 = none)
    context_width: int = 32  # feature channels of the context path
    base: str = "none"  # "interp": decode a correction to a blind neighbour interpolation
    head_width: int = 16  # per-entry features of the "interp" head


class MLP(nn.Module):
    """``depth`` x (Linear -> GELU), then a Linear head."""

    def __init__(self, n_in: int, hidden: int, n_out: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(h)
        return out


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.body = MLP(cfg.window * cfg.channels * 2, cfg.hidden, 2 * cfg.latent, cfg.depth)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.body(u.flatten(1)).chunk(2, dim=-1)  # [B, W*2C] -> [B, Z], [B, Z]
        return mu, logvar


class BlindSpotContext(nn.Module):
    """Features at tick t from ticks t-k..t-1 and t+1..t+k of ``u``, never from tick t."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.k = cfg.context
        self.past = nn.Conv1d(2 * cfg.channels, cfg.context_width, kernel_size=cfg.context)
        self.future = nn.Conv1d(2 * cfg.channels, cfg.context_width, kernel_size=cfg.context)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        k = self.k
        u = u.transpose(1, 2)  # [B, 2C, W]
        past = self.past(nn.functional.pad(u, (k, 0)))[:, :, :-1]  # [B, H, W]: t-k..t-1
        future = self.future(nn.functional.pad(u, (0, k)))[:, :, 1:]  # [B, H, W]: t+1..t+k
        out: torch.Tensor = past + future
        return out


class NeighbourBase(nn.Module):
    """Blind per-entry estimate from the nearest observed neighbours of the same channel.

    For entry (t, c): the last observed value before t and the first after t (each with its
    distance in ticks), linearly interpolated when both exist. Vectorised over a [W, W]
    "earlier than" matrix (no loops, plain ONNX ops).
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        pos = torch.arange(window, dtype=torch.float32)
        self.register_buffer("pos", pos, persistent=False)  # [W]
        self.register_buffer("earlier", (pos[None, :] < pos[:, None]).float(), persistent=False)
        self.window = window

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base [B, W, C], features [B, W, C, 4])``: has_prev, has_next, log1p distances."""
        pos: torch.Tensor = self.pos  # type: ignore[assignment]
        earlier: torch.Tensor = self.earlier  # type: ignore[assignment]
        w = float(self.window)
        s_pos = pos[None, None, :, None]  # [1, 1, S, 1]
        obs = mask[:, None, :, :]  # [B, 1, S, C]
        # last observed s < t (index + 1; 0 = none) and first observed s > t (w - s; 0 = none)
        prev1 = (obs * (s_pos + 1.0) * earlier[None, :, :, None]).amax(dim=2)  # [B, T, C]
        later = earlier.transpose(0, 1)  # [T, S]: s > t
        next1 = (obs * (w - s_pos) * later[None, :, :, None]).amax(dim=2)  # [B, T, C]
        has_prev = (prev1 > 0).float()
        has_next = (next1 > 0).float()
        prev_idx = prev1 - 1.0
        next_idx = w - next1
        v_prev = torch.gather(x, 1, prev_idx.clamp(min=0).long()) * has_prev  # [B, T, C]
        v_next = torch.gather(x, 1, next_idx.clamp(max=w - 1).long()) * has_next
        t_pos = pos[None, :, None]
        d_prev = (t_pos - prev_idx) * has_prev  # 0 when none
        d_next = (next_idx - t_pos) * has_next
        both = has_prev * has_next
        interp = (d_next * v_prev + d_prev * v_next) / (d_prev + d_next).clamp(min=1.0)
        base = both * interp + (1 - both) * (has_prev * v_prev + has_next * v_next)
        feats = torch.stack(
            [has_prev, has_next, torch.log1p(d_prev), torch.log1p(d_next)], dim=-1
        )  # [B, T, C, 4]
        return base, feats


class EntryHead(nn.Module):
    """Per-entry correction from the blind base, its distances, the decoder's output for the
    entry, and the same tick's *other* channels (a linear map with its diagonal masked out)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        c, h = cfg.channels, cfg.head_width
        self.channels, self.width = c, h
        self.cross = nn.Linear(3 * c, c * h)  # other channels: x*m, m, (x - base)*m
        blind = 1.0 - torch.eye(c)  # [C_out, C_in]: never from the same channel
        blind_w = blind[:, None, None, :].expand(c, h, 3, c).reshape(c * h, 3 * c)
        self.register_buffer("blind", blind_w.contiguous(), persistent=False)
        self.own = nn.Linear(7, h)  # base, 4 neighbour features, decoder mean/raw
        self.out = nn.Sequential(nn.GELU(), nn.Linear(h, 3))  # mean, log-var, base gate

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        neighbours: tuple[torch.Tensor, torch.Tensor],
        decoded: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, mask [B, W, C]; neighbours = NeighbourBase's output; decoded = (mean, raw)."""
        base, feats = neighbours
        mean, raw = decoded
        blind: torch.Tensor = self.blind  # type: ignore[assignment]
        xm = x * mask
        tick = torch.cat([xm, mask, (x - base) * mask], dim=-1)  # [B, W, 3C]
        cross = nn.functional.linear(tick, self.cross.weight * blind, self.cross.bias)
        cross = cross.view(x.shape[0], x.shape[1], self.channels, self.width)  # [B, W, C, H]
        own = torch.cat([base[..., None], feats, mean[..., None], raw[..., None]], dim=-1)
        h = cross + self.own(own)  # [B, W, C, H]
        d_mean, d_raw, gate = self.out(h).unbind(dim=-1)  # [B, W, C] each
        g = torch.sigmoid(gate)  # how far to trust the neighbours vs the latent's mean
        return g * base + (1.0 - g) * mean + d_mean, raw + d_raw


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.context_width if cfg.context else 2 * cfg.channels
        self.body = MLP(cfg.latent, cfg.hidden, cfg.window * width, cfg.depth)
        if cfg.context:
            self.context = BlindSpotContext(cfg)
            self.head = nn.Sequential(
                nn.GELU(),
                nn.Conv1d(width, width, kernel_size=1),
                nn.GELU(),
                nn.Conv1d(width, 2 * cfg.channels, kernel_size=1),
            )
        if cfg.base == "interp":
            self.neighbours = NeighbourBase(cfg.window)
            self.entry = EntryHead(cfg)
        elif cfg.base != "none":
            raise ValueError(f"base must be 'none' or 'interp', got {cfg.base!r}")

    def forward(
        self, z: torch.Tensor, u: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if cfg.context:
            g = self.body(z).unflatten(1, (cfg.window, cfg.context_width))  # [B, W, H]
            h = g.transpose(1, 2) + self.context(u)  # [B, H, W]
            out = self.head(h).transpose(1, 2)  # [B, W, 2C]
        else:
            out = self.body(z).unflatten(1, (cfg.window, 2 * cfg.channels))  # [B, W, 2C]
        mean, raw = out.chunk(2, dim=-1)  # [B, W, C], [B, W, C]
        if cfg.base == "interp":
            neighbours = self.neighbours(x, mask)  # [B, W, C], [B, W, C, 4]
            mean, raw = self.entry(x, mask, neighbours, (mean, raw))
        logvar = cfg.logvar_min + (cfg.logvar_max - cfg.logvar_min) * torch.sigmoid(raw)
        return mean, logvar


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic decoding (z = mu): ``(mean, logvar)`` [B, W, C]."""
        u = torch.cat([x * mask, mask], dim=-1)  # [B, W, 2C]
        mu, _ = self.encoder(u)  # [B, Z]
        mean, logvar = self.decoder(mu, u, x * mask, mask)
        return mean, logvar

    def sample(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass with a reparameterised z: ``(mean, logvar, mu_z, logvar_z)``."""
        u = torch.cat([x * mask, mask], dim=-1)  # [B, W, 2C]
        mu, logvar_z = self.encoder(u)  # [B, Z]
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar_z) * eps
        mean, logvar = self.decoder(z, u, x * mask, mask)  # [B, W, C]
        return mean, logvar, mu, logvar_z


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-entry negative log-likelihood of ``target`` under N(mean, exp(logvar))."""
    return 0.5 * (LOG_2PI + logvar + (target - mean) ** 2 * torch.exp(-logvar))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per window: [B]."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)
