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

With ``base="interp"`` the decoder has a second path, an *entry head*: per entry, a blind
neighbour estimate computed inside the graph (linear interpolation between the channel's
nearest observed values before and after it; carry-forward / back-fill when only one side
exists; 0 when neither; never the entry itself), corrected by a small per-entry network that
sees that estimate, its distances, how far those neighbours sat from the latent path's
reconstruction at their own ticks, the latent path's output for the entry, and, through a
channel-blind linear map, the same tick's other channels. The exported output takes
*missing* entries from the entry head (the imputation: gaps are filled from the last values
and what the rest of the device does now) and *observed* entries from the latent path (their
likelihood is the anomaly score, which a one-step neighbour predictor would explain away).
The exported graph runs the entry head at the two positions the edge reads only (the newest
tick and the back-fill tick, :meth:`Decoder.restrict_entry_head`). Opt-in: it fills gaps far
better and scores exactly as the latent path alone does (the head reads the latent path
through a stop-gradient), at about twice the inference cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VAE", "Sample", "VAEConfig", "gaussian_nll", "kl_divergence"]

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

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        ref: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base [B, T, C], features [B, T, C, F])``: has_prev, has_next, log1p distances,
        for every tick (T = W) or for the ticks ``rows`` only.

        With ``ref`` [B, W, C] (the latent path's mean), two more features: how far the
        previous and the next observed value sat from ``ref`` at their own ticks (0 where
        none) -- the local departure from the window-level reconstruction that a gap's
        neighbours carry, to be carried into the gap.
        """
        pos: torch.Tensor = self.pos  # type: ignore[assignment]
        earlier: torch.Tensor = self.earlier  # type: ignore[assignment]
        if rows is not None:  # only these ticks t (the rest of the window is still read)
            pos_t, earlier = pos[rows], earlier[rows]
        else:
            pos_t = pos
        w = float(self.window)
        s_pos = pos[None, None, :, None]  # [1, 1, S, 1]
        obs = mask[:, None, :, :]  # [B, 1, S, C]
        # last observed s < t (index + 1; 0 = none) and first observed s > t (w - s; 0 = none)
        prev1 = (obs * (s_pos + 1.0) * earlier[None, :, :, None]).amax(dim=2)  # [B, T, C]
        later = (pos[None, :] > pos_t[:, None]).float()  # [T, S]: s > t
        next1 = (obs * (w - s_pos) * later[None, :, :, None]).amax(dim=2)  # [B, T, C]
        has_prev = (prev1 > 0).float()
        has_next = (next1 > 0).float()
        prev_idx = prev1 - 1.0
        next_idx = w - next1
        i_prev = prev_idx.clamp(min=0).long()
        i_next = next_idx.clamp(max=w - 1).long()
        v_prev = torch.gather(x, 1, i_prev) * has_prev  # [B, T, C]
        v_next = torch.gather(x, 1, i_next) * has_next
        t_pos = pos_t[None, :, None]
        d_prev = (t_pos - prev_idx) * has_prev  # 0 when none
        d_next = (next_idx - t_pos) * has_next
        both = has_prev * has_next
        interp = (d_next * v_prev + d_prev * v_next) / (d_prev + d_next).clamp(min=1.0)
        base = both * interp + (1 - both) * (has_prev * v_prev + has_next * v_next)
        parts = [has_prev, has_next, torch.log1p(d_prev), torch.log1p(d_next)]
        if ref is not None:
            parts.append((v_prev - torch.gather(ref, 1, i_prev)) * has_prev)
            parts.append((v_next - torch.gather(ref, 1, i_next)) * has_next)
        return base, torch.stack(parts, dim=-1)  # [B, T, C, 4 or 6]


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
        self.own = nn.Linear(9, h)  # base, 6 neighbour features, decoder mean/raw
        self.out = nn.Sequential(
            nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 3)
        )  # mean, log-var, base gate

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
        # A channel with no observation anywhere in the window (an outage longer than the
        # window) has no neighbour to correct: the latent path's estimate stands.
        local = (feats[..., 0] + feats[..., 1]).clamp(max=1.0)  # has_prev or has_next
        return (
            mean + local * (g * (base - mean) + d_mean),
            raw + local * d_raw,
        )


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
        self.entry_rows: torch.Tensor | None = None  # see restrict_entry_head
        self.entry_place: torch.Tensor | None = None
        if cfg.base == "interp":
            self.neighbours = NeighbourBase(cfg.window)
            self.entry = EntryHead(cfg)
        elif cfg.base != "none":
            raise ValueError(f"base must be 'none' or 'interp', got {cfg.base!r}")

    def paths(
        self, z: torch.Tensor, u: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """``((mean, logvar) of the latent path, (mean, logvar) of the entry head or None)``.

        The latent path decodes every entry from z (plus the blind-spot context); the entry
        head (``base="interp"``) decodes each entry blind to itself, from its neighbours, the
        same tick's other channels and the latent path's output.
        """
        cfg = self.cfg
        if cfg.context:
            g = self.body(z).unflatten(1, (cfg.window, cfg.context_width))  # [B, W, H]
            h = g.transpose(1, 2) + self.context(u)  # [B, H, W]
            out = self.head(h).transpose(1, 2)  # [B, W, 2C]
        else:
            out = self.body(z).unflatten(1, (cfg.window, 2 * cfg.channels))  # [B, W, 2C]
        mean, raw = out.chunk(2, dim=-1)  # [B, W, C], [B, W, C]
        latent = (mean, self._logvar(raw))
        if cfg.base != "interp":
            return latent, None
        # The entry head reads the latent path but never trains it: the anomaly score (the
        # latent path's likelihood) is the same as without the head.
        ref, ref_raw = mean.detach(), raw.detach()
        rows = self.entry_rows
        if rows is None:
            neighbours = self.neighbours(x, mask, ref)  # [B, W, C], [B, W, C, 6]
            e_mean, e_raw = self.entry(x, mask, neighbours, (ref, ref_raw))
            return latent, (e_mean, self._logvar(e_raw))
        # Only the ticks the edge reads (newest, back-fill): [B, R, C], placed into the
        # window over the latent path's output through a one-hot [R, W] matrix.
        neighbours = self.neighbours(x, mask, ref, rows)
        e_mean, e_raw = self.entry(
            x[:, rows], mask[:, rows], neighbours, (ref[:, rows], ref_raw[:, rows])
        )
        place = self.entry_place
        assert place is not None  # set together with entry_rows
        e_logvar = self._logvar(e_raw)
        full_mean = mean + torch.einsum("rw,brc->bwc", place, e_mean - mean[:, rows])
        full_logvar = latent[1] + torch.einsum("rw,brc->bwc", place, e_logvar - latent[1][:, rows])
        return latent, (full_mean, full_logvar)

    def restrict_entry_head(self, positions: tuple[int, ...] | None) -> None:
        """Run the entry head at these window positions only (None: all, as in training).

        The edge reads two positions of the output (the newest tick, and the back-fill tick
        ``backfill_delay`` back); elsewhere the exported graph then returns the latent path's
        estimate, and inference costs a fraction of a whole-window entry head.
        """
        if positions is None:
            self.entry_rows, self.entry_place = None, None
            return
        w = self.cfg.window
        rows = sorted(set(positions))
        if not rows or rows[0] < 0 or rows[-1] >= w:
            raise ValueError(f"entry positions must lie in [0, {w}), got {positions}")
        self.entry_rows = torch.tensor(rows, dtype=torch.long)
        self.entry_place = nn.functional.one_hot(self.entry_rows, w).float()  # [R, W]

    def _logvar(self, raw: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return cfg.logvar_min + (cfg.logvar_max - cfg.logvar_min) * torch.sigmoid(raw)

    def forward(
        self, z: torch.Tensor, u: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exported output: observed entries from the latent path (their likelihood is
        the anomaly score), missing entries from the entry head when there is one (their mean
        and σ are the imputation)."""
        latent, entry = self.paths(z, u, x, mask)
        if entry is None:
            return latent
        return (
            mask * latent[0] + (1.0 - mask) * entry[0],
            mask * latent[1] + (1.0 - mask) * entry[1],
        )


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
    ) -> Sample:
        """Training pass with a reparameterised z: both decoder paths and q(z|x)."""
        u = torch.cat([x * mask, mask], dim=-1)  # [B, W, 2C]
        mu, logvar_z = self.encoder(u)  # [B, Z]
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar_z) * eps
        latent, entry = self.decoder.paths(z, u, x * mask, mask)  # [B, W, C] each
        return Sample(latent=latent, entry=entry, mu_z=mu, logvar_z=logvar_z)


@dataclass(frozen=True)
class Sample:
    """One training pass: ``(mean, logvar)`` of the latent path and of the entry head (None
    without ``base="interp"``), and the posterior ``(mu_z, logvar_z)``."""

    latent: tuple[torch.Tensor, torch.Tensor]
    entry: tuple[torch.Tensor, torch.Tensor] | None
    mu_z: torch.Tensor
    logvar_z: torch.Tensor


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-entry negative log-likelihood of ``target`` under N(mean, exp(logvar))."""
    return 0.5 * (LOG_2PI + logvar + (target - mean) ** 2 * torch.exp(-logvar))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per window: [B]."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)
