"""The VAE, its loss terms, training windows, the loop, and the checked ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import export as export_mod
from training.errors import ExportError, TrainingError
from training.export import export_checked
from training.model import VAE, VAEConfig, gaussian_nll, kl_divergence
from training.train import TrainConfig, train_vae
from training.windows import make_windows


def test_shapes_and_bounded_logvar() -> None:
    cfg = VAEConfig(window=12, channels=3, hidden=32, latent=4)
    model = VAE(cfg).eval()
    x = torch.randn(5, 12, 3) * 100
    mean, logvar = model(x, torch.ones_like(x))
    assert mean.shape == logvar.shape == (5, 12, 3)
    assert logvar.min() >= cfg.logvar_min and logvar.max() <= cfg.logvar_max
    out = model.sample(x, torch.ones_like(x), torch.Generator().manual_seed(0))
    assert [t.shape for t in out.latent] == [(5, 12, 3), (5, 12, 3)]
    assert out.entry is None
    assert out.mu_z.shape == out.logvar_z.shape == (5, 4)


def test_masked_entries_do_not_reach_the_model() -> None:
    model = VAE(VAEConfig(window=4, channels=2, hidden=8, latent=2)).eval()
    x = torch.randn(1, 4, 2)
    mask = torch.ones_like(x)
    mask[0, 2, 1] = 0
    changed = x.clone()
    changed[0, 2, 1] = 1e6
    torch.testing.assert_close(model(x, mask), model(changed, mask))


def test_context_path_never_sees_the_tick_it_decodes() -> None:
    cfg = VAEConfig(window=10, channels=2, hidden=16, latent=2, context=3)
    model = VAE(cfg).eval()
    for p in model.encoder.parameters():  # silence the latent path: only the context varies
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 10, 2)
    mask = torch.ones_like(x)
    base, _ = model(x, mask)
    for t in range(10):
        bumped = x.clone()
        bumped[0, t, 0] += 100.0
        moved = (model(bumped, mask)[0] - base).abs()[0].sum(dim=-1) > 1e-6  # [W]
        assert not moved[t]
        assert moved[max(0, t - 3) : t].all() and moved[t + 1 : t + 4].all()
        assert not moved[: max(0, t - 3)].any() and not moved[t + 4 :].any()


def test_loss_terms() -> None:
    zero = torch.zeros(3)
    assert torch.allclose(gaussian_nll(zero, zero, zero), torch.full((3,), 0.5 * np.log(2 * np.pi)))
    assert kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).tolist() == [0.0, 0.0]
    assert (kl_divergence(torch.ones(2, 4), torch.zeros(2, 4)) > 0).all()


def test_windows_skip_anomalies_and_sparse_stretches() -> None:
    values = np.arange(40.0).reshape(20, 2)
    values[5:8] = np.nan  # 3 silent ticks
    exclude = np.zeros(20, dtype=bool)
    exclude[15] = True
    ws = make_windows([values], np.zeros(2), np.ones(2), 4, exclude=[exclude], min_observed=0.5)
    starts = ws.starts.tolist()
    assert all(not (s <= 15 < s + 4) for s in starts)  # no window holds the anomaly
    assert 4 not in starts and 5 not in starts  # 3 of 4 ticks missing: too sparse
    assert 3 in starts and 8 in starts
    x, obs = ws.gather(np.array([0]))
    assert x.shape == (1, 4, 2) and obs.all()
    with pytest.raises(TrainingError, match="no training window"):
        make_windows([values[:3]], np.zeros(2), np.ones(2), 4)


def tiny_windows() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    t = np.arange(400)
    values = np.column_stack([np.sin(t / 10), np.cos(t / 10)]) + 0.05 * rng.normal(size=(400, 2))
    return (values,)


def test_training_lowers_the_loss_and_is_deterministic() -> None:
    ws = make_windows(list(tiny_windows()), np.zeros(2), np.ones(2), 8)
    cfg = TrainConfig(window=8, hidden=32, latent=4, epochs=4, batch_size=32, seed=1)
    a = train_vae(ws, 2, cfg, progress=False)
    b = train_vae(ws, 2, cfg, progress=False)
    assert a.epoch_losses[-1] < a.epoch_losses[0]
    assert a.epoch_losses == b.epoch_losses
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_export_parity_and_loud_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = make_windows(list(tiny_windows()), np.zeros(2), np.ones(2), 8)
    cfg = TrainConfig(window=8, hidden=16, latent=2, epochs=1, seed=2)
    model = train_vae(ws, 2, cfg, progress=False).model
    x, obs = ws.gather(np.arange(32))
    result = export_checked(model, x, obs.astype(np.float32))
    assert result.max_abs_diff <= 1e-4 and result.opset == 18 and result.onnx_bytes
    other = train_vae(ws, 2, TrainConfig(**{**cfg.__dict__, "seed": 3}), progress=False).model
    other_bytes = export_mod.export_onnx(other)
    monkeypatch.setattr(export_mod, "export_onnx", lambda model, opset=18: other_bytes)
    with pytest.raises(ExportError, match="differs from torch"):
        export_checked(model, x, obs.astype(np.float32))
