"""The ``base="interp"`` decoder: a blind neighbour interpolation plus a per-entry head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.export import export_checked
from training.model import VAE, NeighbourBase, VAEConfig
from training.train import TrainConfig, train_vae
from training.windows import make_windows


def _reference_base(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Loop version: interpolate each entry between its nearest observed neighbours."""
    out = torch.zeros_like(x)
    batch, window, channels = x.shape
    for b in range(batch):
        for t in range(window):
            for c in range(channels):
                seen = [s for s in range(window) if mask[b, s, c] > 0 and s != t]
                before = [s for s in seen if s < t]
                after = [s for s in seen if s > t]
                if before and after:
                    p, n = before[-1], after[0]
                    out[b, t, c] = (x[b, p, c] * (n - t) + x[b, n, c] * (t - p)) / (n - p)
                elif before:
                    out[b, t, c] = x[b, before[-1], c]
                elif after:
                    out[b, t, c] = x[b, after[0], c]
    return out


def test_neighbour_base_interpolates_and_carries_forward() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 2, generator=gen)
    mask = (torch.rand(3, 9, 2, generator=gen) > 0.5).float()
    mask[0, :, 0] = 0.0  # a channel with no observation at all: base 0
    base, feats = NeighbourBase(9)(x * mask, mask)
    torch.testing.assert_close(base, _reference_base(x * mask, mask))
    assert feats.shape == (3, 9, 2, 4)
    assert (base[0, :, 0] == 0).all()


def test_interp_decoder_never_sees_the_entry_it_decodes() -> None:
    cfg = VAEConfig(window=8, channels=3, hidden=16, latent=2, base="interp")
    model = VAE(cfg).eval()
    z = torch.randn(2, cfg.latent)
    x = torch.randn(2, 8, 3)
    mask = torch.ones_like(x)
    u = torch.cat([x, mask], dim=-1)
    _, entry = model.decoder.paths(z, u, x, mask)  # latent fixed: only the local paths vary
    assert entry is not None
    mean, logvar = entry
    for t in range(8):
        for c in range(3):
            bumped = x.clone()
            bumped[:, t, c] += 100.0
            _, entry2 = model.decoder.paths(z, u, bumped, mask)
            assert entry2 is not None
            mean2, logvar2 = entry2
            assert torch.equal(mean2[:, t, c], mean[:, t, c])
            assert torch.equal(logvar2[:, t, c], logvar[:, t, c])
            assert not torch.equal(mean2, mean)  # the neighbours and other channels do see it


def test_interp_output_scores_observed_entries_on_the_latent_path() -> None:
    """Observed entries come from the latent path (the anomaly score must not be explained
    away by a neighbour), missing ones from the entry head (the imputation)."""
    cfg = VAEConfig(window=8, channels=3, hidden=16, latent=2, base="interp")
    model = VAE(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 3, generator=gen)
    mask = (torch.rand(2, 8, 3, generator=gen) > 0.3).float()
    u = torch.cat([x * mask, mask], dim=-1)
    z, _ = model.encoder(u)
    latent, entry = model.decoder.paths(z, u, x * mask, mask)
    assert entry is not None
    mean, logvar = model(x, mask)
    seen, gap = mask.bool(), ~mask.bool()
    torch.testing.assert_close(mean[seen], latent[0][seen])
    torch.testing.assert_close(logvar[seen], latent[1][seen])
    torch.testing.assert_close(mean[gap], entry[0][gap])
    torch.testing.assert_close(logvar[gap], entry[1][gap])
    assert not torch.equal(latent[0][gap], entry[0][gap])


def test_unknown_base_is_refused() -> None:
    with pytest.raises(ValueError, match="base"):
        VAE(VAEConfig(window=4, channels=2, base="cubic"))


def test_interp_model_trains_and_exports_with_parity() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(400)
    raw = np.stack([np.sin(t / 7.0), np.cos(t / 11.0), np.sin(t / 5.0)], axis=1)
    raw = raw + 0.05 * rng.standard_normal(raw.shape)
    raw[rng.random(raw.shape) < 0.1] = np.nan
    windows = make_windows([raw], np.zeros(3), np.ones(3), 16)
    cfg = TrainConfig(window=16, hidden=32, latent=4, epochs=2, batch_size=64, base="interp")
    result = train_vae(windows, 3, cfg, progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    x, obs = windows.gather(np.arange(0, len(windows), 20))
    result.model.decoder.restrict_entry_head((11, 15))  # as training.train_bundle exports it
    exported = export_checked(result.model, x, obs.astype(np.float32))
    assert exported.max_abs_diff < 1e-3


def test_train_cli_reads_base_from_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cli.train import _parser, config_from_args

    args = _parser().parse_args(["data.csv", "--out", "m", "--base", "none"])
    assert config_from_args(args).train.base == "none"
    assert config_from_args(_parser().parse_args(["data.csv"])).train.base == "interp"
    monkeypatch.setenv("GAPWATCH_TRAIN_BASE", "none")
    assert config_from_args(_parser().parse_args(["data.csv"])).train.base == "none"
    with pytest.raises(SystemExit):
        _parser().parse_args(["data.csv", "--base", "cubic"])


def test_restricted_entry_head_matches_the_full_one_where_it_runs() -> None:
    """Exported bundles run the entry head at the newest and back-fill ticks only: there the
    output equals the whole-window head's, elsewhere it is the latent path's."""
    cfg = VAEConfig(window=10, channels=3, hidden=16, latent=2, base="interp")
    model = VAE(cfg).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 10, 3, generator=gen)
    mask = (torch.rand(4, 10, 3, generator=gen) > 0.4).float()
    with torch.no_grad():
        full_mean, full_logvar = model(x, mask)
        model.decoder.restrict_entry_head((9, 6))
        mean, logvar = model(x, mask)
        u = torch.cat([x * mask, mask], dim=-1)
        latent, _ = model.decoder.paths(model.encoder(u)[0], u, x * mask, mask)
    for t in (6, 9):
        torch.testing.assert_close(mean[:, t], full_mean[:, t])
        torch.testing.assert_close(logvar[:, t], full_logvar[:, t])
    other = [t for t in range(10) if t not in (6, 9)]
    torch.testing.assert_close(mean[:, other], latent[0][:, other])
    assert not torch.equal(mean[:, other], full_mean[:, other])
    with pytest.raises(ValueError, match="positions"):
        model.decoder.restrict_entry_head((10,))


def test_entry_head_leaves_the_anomaly_path_as_it_would_be_without_it() -> None:
    """Trained with the same seed, ``interp`` and ``none`` give the same latent path: the entry
    head reads it but never trains it, so observed entries score exactly the same."""
    rng = np.random.default_rng(2)
    t = np.arange(300)
    raw = np.stack([np.sin(t / 6.0), np.cos(t / 9.0)], axis=1) + 0.05 * rng.standard_normal(
        (300, 2)
    )
    raw[rng.random(raw.shape) < 0.1] = np.nan
    windows = make_windows([raw], np.zeros(2), np.ones(2), 12)
    outputs = {}
    for base in ("none", "interp"):
        cfg = TrainConfig(window=12, hidden=16, latent=3, epochs=2, batch_size=32, base=base)
        model = train_vae(windows, 2, cfg, progress=False).model
        x, obs = windows.gather(np.arange(0, len(windows), 7))
        mask = torch.from_numpy(obs.astype(np.float32))
        with torch.no_grad():
            outputs[base] = model(torch.from_numpy(x) * mask, mask)
    seen = torch.from_numpy(obs)
    for k in (0, 1):  # mean, logvar
        torch.testing.assert_close(outputs["interp"][k][seen], outputs["none"][k][seen])
    assert not torch.equal(outputs["interp"][0][~seen], outputs["none"][0][~seen])


def test_a_channel_silent_for_the_whole_window_is_filled_by_the_latent_path() -> None:
    """No neighbour to interpolate (an outage longer than the window): the entry head leaves
    the latent path's estimate, instead of correcting a base of 0 it never trained on."""
    cfg = VAEConfig(window=8, channels=3, hidden=16, latent=2, base="interp")
    model = VAE(cfg).eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 3, generator=gen)
    mask = torch.ones_like(x)
    mask[:, :, 1] = 0.0  # channel 1 silent throughout
    mask[:, 5:, 2] = 0.0  # channel 2 silent at the end only: it has neighbours before
    u = torch.cat([x * mask, mask], dim=-1)
    with torch.no_grad():
        z, _ = model.encoder(u)
        latent, entry = model.decoder.paths(z, u, x * mask, mask)
    assert entry is not None
    torch.testing.assert_close(entry[0][:, :, 1], latent[0][:, :, 1])
    torch.testing.assert_close(entry[1][:, :, 1], latent[1][:, :, 1])
    assert not torch.equal(entry[0][:, 5:, 2], latent[0][:, 5:, 2])
