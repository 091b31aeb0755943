"""Training the VAE: the missing-data ELBO and the loop (plain functions).

Loss per batch (scaled units), with ``obs`` the entries observed in the data and ``hide`` the
ones artificially hidden from the encoder this step (``training.masks``)::

    w    = obs * (1 + (hidden_weight - 1) * hide) * stopgrad(σ^(2 nll_beta))
    loss = (sum w * nll + beta_t * KL) / count(obs)

so the likelihood covers every observed entry, hidden ones included: the model learns to
reconstruct what it cannot see. With an entry head (``base="interp"``) the loss adds that
head's NLL over the hidden entries only, normalised by their count: at inference the head
fills gaps and nothing else (observed entries are scored on the latent path).
``nll_beta > 0`` is β-NLL (Seitzer et al., 2022), which keeps
a heteroscedastic model from buying a poor mean with a large variance. ``beta_t`` ramps from 0
to ``beta`` over the first ``beta_warmup`` fraction of steps. Deterministic for a given
``seed`` (numpy Generator for batches and masks, a seeded torch Generator for z, deterministic
torch algorithms, fixed thread count).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from training.errors import TrainingError
from training.masks import MaskMix, training_mask
from training.model import VAE, VAEConfig, gaussian_nll, kl_divergence
from training.windows import WindowSet

__all__ = ["TrainConfig", "TrainResult", "train_vae"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    window: int = 32
    hidden: int = 256
    latent: int = 16
    depth: int = 2
    context: int = 0  # blind-spot context ticks on each side (0 = latent path only)
    base: str = "interp"  # entry head filling gaps from neighbours ("none": latent path only)
    head_width: int = 16  # per-entry features of the "interp" entry head
    # window positions the entry head is trained (and later run) at; None: every position.
    # training.train_bundle sets the two the edge reads: the newest and the back-fill tick.
    entry_rows: tuple[int, ...] | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    beta: float = 1.0
    beta_warmup: float = 0.3  # fraction of all steps over which beta ramps up from 0
    hidden_weight: float = 1.0  # extra weight of artificially hidden entries in the NLL
    nll_beta: float = 0.0  # β-NLL: weigh each entry's NLL by σ^(2β) (stop-gradient); 0 = plain
    min_observed: float = 0.5  # windows with fewer observed entries are not trained on
    seed: int = 0
    threads: int = 1
    mask: MaskMix = field(default_factory=MaskMix)

    def vae_config(self, channels: int) -> VAEConfig:
        return VAEConfig(
            window=self.window,
            channels=channels,
            hidden=self.hidden,
            latent=self.latent,
            depth=self.depth,
            context=self.context,
            base=self.base,
            head_width=self.head_width,
        )


@dataclass(frozen=True)
class TrainResult:
    model: VAE
    epoch_losses: tuple[float, ...]  # mean loss per epoch (per observed entry)


def train_vae(
    windows: WindowSet, channels: int, config: TrainConfig, *, progress: bool = True
) -> TrainResult:
    """Train a fresh VAE on ``windows``; deterministic for ``config.seed``."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _train(windows, channels, config, progress)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _weighted_nll(
    x: torch.Tensor, path: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor, nll_beta: float
) -> torch.Tensor:
    """Sum of ``weight`` x Gaussian NLL (β-NLL re-weighting when ``nll_beta`` > 0)."""
    mean, logvar = path
    if nll_beta:
        weight = weight * torch.exp(nll_beta * logvar.detach())
    return (gaussian_nll(x, mean, logvar) * weight).sum()


def _train(windows: WindowSet, channels: int, cfg: TrainConfig, progress: bool) -> TrainResult:
    model = VAE(cfg.vae_config(channels))
    if cfg.base == "interp" and cfg.entry_rows is not None:
        model.decoder.restrict_entry_head(cfg.entry_rows)
    rows = torch.zeros(1, cfg.window, 1)  # where the entry head's output is its own
    rows[:, list(cfg.entry_rows) if cfg.entry_rows is not None else slice(None)] = 1.0
    rng = np.random.default_rng(cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head = [p for n, p in model.named_parameters() if n.startswith("decoder.entry.")]
    ids = {id(p) for p in head}
    param_groups = [[p for p in model.parameters() if id(p) not in ids], head]
    steps_per_epoch = max(1, math.ceil(len(windows) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.1
    )
    ramp = max(1, int(cfg.beta_warmup * total))
    step = 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        order = rng.permutation(len(windows))
        sum_loss, n_batches = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if idx.size == 0:
                continue
            x_np, obs_np = windows.gather(idx)
            hide_np = training_mask(x_np.shape, rng, cfg.mask) & obs_np
            x = torch.from_numpy(x_np)
            obs = torch.from_numpy(obs_np.astype(np.float32))
            hide = torch.from_numpy(hide_np.astype(np.float32))
            seen = obs * (1.0 - hide)
            out = model.sample(x * seen, seen, noise)
            weight = obs * (1.0 + (cfg.hidden_weight - 1.0) * hide)
            recon = _weighted_nll(x, out.latent, weight, cfg.nll_beta)
            beta = cfg.beta * min(1.0, step / ramp)
            loss = (recon + beta * kl_divergence(out.mu_z, out.logvar_z).sum()) / obs.sum().clamp(
                min=1
            )
            if out.entry is not None:  # the entry head only ever fills gaps: train it on them
                fill = obs * hide * rows
                loss = loss + _weighted_nll(x, out.entry, fill, cfg.nll_beta) / fill.sum().clamp(
                    min=1
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            for group in param_groups:  # the entry head's gradients never rescale the VAE's
                torch.nn.utils.clip_grad_norm_(group, 5.0)
            opt.step()
            sched.step()
            step += 1
            sum_loss += float(loss.detach())
            n_batches += 1
        mean_loss = sum_loss / max(1, n_batches)
        if not math.isfinite(mean_loss):
            raise TrainingError(f"training diverged in epoch {epoch + 1} (loss {mean_loss})")
        losses.append(mean_loss)
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        log.debug("train.epoch", extra={"epoch": epoch + 1, "loss": mean_loss})
    model.eval()
    return TrainResult(model=model, epoch_losses=tuple(losses))
