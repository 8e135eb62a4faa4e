"""The network's physics pieces: MSKF's advective hold time, its trigger test on source layers,
level indices as a choice among levels and the recurrent core cut above the cloud tops."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from emulator import updraft as kf
from emulator.contract import default_contract
from emulator.features import source_layer_trigger
from emulator.model import CumulusLSTM, ModelConfig, advective_time, flops_per_column
from training.columns import extract
from training.data import ColumnBatches
from training.store import Store
from training.train import TrainConfig, loss_terms
from training.wrfout import open_wrfout

DEEP = 2


def _oracle_columns(path):
    """Contract columns of one oracle file (through the pipeline's own extraction) as torch
    tensors, the MSKF column classes and DT."""
    contract = default_contract()
    frame = open_wrfout(path, contract, chunks=None).isel(Time=0)
    unit = extract(frame, contract.with_levels(frame.sizes["bottom_top"]), 1, "single_call")
    columns = {k: torch.from_numpy(v[:, 0] if v.shape[1] == 1 else v) for k, v in unit.arrays.items()}
    return columns, unit.column_class, float(frame.attrs["DT"])


def test_advective_time_from_the_cloud_base_is_mskf_nca(oracle_files):
    """MSKF holds a deep column for NINT(DX / VCONV / DT) steps: from the true cloud base the
    formula reproduces every deep column's NCA of every oracle file."""
    for path in oracle_files:
        columns, kind, dt = _oracle_columns(path)
        deep = kind == DEEP
        assert deep.sum() > 1000
        nca = np.rint(advective_time(columns, columns["CUBOT"]).numpy() / dt) * dt
        np.testing.assert_array_equal(nca[deep], columns["NCA"].numpy()[deep], err_msg=path.name)


def test_trigger_test_passes_wherever_mskf_convected(oracle_files):
    for path in oracle_files[1::3]:
        columns, kind, _ = _oracle_columns(path)
        test, cloud_base, lcls, buoyancy = source_layer_trigger(columns, bases=16)
        active = kind > 0
        passes = (cloud_base.sum(dim=1) == 1).numpy()
        assert set(np.unique(cloud_base.numpy())) <= {0.0, 1.0}
        # MSKF's dew point comes from a table and its sums run in another order: a few
        # marginal columns may differ.
        assert passes[active].mean() > 0.998, f"{path.name}: no source layer passes where MSKF convected"
        assert passes[~active].mean() < 0.6
        # The first layer that passes usually has MSKF's cloud base as its LCL.
        base = cloud_base.argmax(dim=1).numpy() + 1
        assert np.mean(base[active] == columns["CUBOT"].numpy()[active]) > 0.6
        # ... and MSKF's cloud base is always the LCL of one of the layers that pass.
        cubot = columns["CUBOT"].numpy().astype(int)[active] - 1
        assert np.mean(lcls.numpy()[active][np.arange(cubot.size), cubot] == 1) > 0.99
        assert (test.numpy() >= -2).all() and (test.numpy() <= 2).all()
        assert torch.isfinite(buoyancy).all() and (buoyancy[active].amax(dim=1) > 0).float().mean() > 0.9


@pytest.fixture(scope="module")
def batch_and_model(synthetic_store):
    store = Store(synthetic_store)
    contract = store.contract()
    stats = json.loads(store.path("stats.json").read_text())
    cfg = ModelConfig(hidden=8, layers=1, column_hidden=8, level_targets=["CUBOT", "CUTOP"],
                      advective_nca=True, core_top_margin=2, trigger_features=True)
    torch.manual_seed(0)
    model = CumulusLSTM(contract, stats, cfg)
    batch = next(iter(ColumnBatches(store, "train", contract, 256, shuffle=False)))
    return batch, model, stats


def test_level_targets_core_and_advective_nca(batch_and_model):
    batch, model, stats = batch_and_model
    n = model.contract.n_levels
    assert model.n_core == min(n, int(max(stats["targets"]["CUTOP"]["max"])) + 2)
    assert "NCA" not in model.column_outputs and "CUBOT" not in model.column_outputs
    with torch.no_grad():
        out = model(batch)
        phys = model.physical(out, batch)
    assert out["CUBOT"].shape == (256, model.n_core)
    for name in ("CUBOT", "CUTOP"):
        level = phys[name].numpy()
        assert np.array_equal(level, np.rint(level)) and level.min() >= 1 and level.max() <= model.n_core
    above = np.arange(1, n + 1)[None, :] > phys["CUTOP"].numpy()[:, None]
    for name in model.level_outputs:
        assert (phys[name].numpy()[above] == 0).all(), f"{name} non-zero above the cloud top"
    np.testing.assert_array_equal(phys["NCA"].numpy(), advective_time(batch, phys["CUBOT"]).numpy())


@pytest.mark.parametrize("stride", [2, 3])
def test_level_stride_steps_over_groups_of_levels(batch_and_model, stride):
    batch, base, stats = batch_and_model
    torch.manual_seed(0)
    model = CumulusLSTM(base.contract, stats, dataclasses.replace(base.cfg, level_stride=stride)).eval()
    assert model.core_steps == -(-model.n_core // stride)
    x = model.features(batch).detach().requires_grad_(True)
    out = model.heads(x)
    assert out["RTHCUTEN"].shape == batch["RTHCUTEN"].shape and out["CUTOP"].shape == (256, model.n_core)
    # Each level's output comes from its own step: with the recurrence cut (no hidden-to-hidden
    # weights, forget gates shut) the output at a level depends on the features of exactly
    # the levels of its step.
    h = model.cfg.hidden
    with torch.no_grad():
        for direction in ("", "_reverse"):
            getattr(model.lstm, f"weight_hh_l0{direction}").zero_()
            getattr(model.lstm, f"bias_ih_l0{direction}")[h:2 * h] = -1e4
    for k in (0, model.n_core // 2, model.n_core - 1):
        x.grad = None
        model.heads(x)["RTHCUTEN"][:, k].sum().backward()
        touched = x.grad.abs().sum(dim=(0, 1)) > 0
        step = k // stride
        expected = torch.zeros_like(touched)
        expected[step * stride:min((step + 1) * stride, model.n_core)] = True
        assert torch.equal(touched, expected), f"level {k}"
    # The cost follows the steps.
    assert flops_per_column(model) < flops_per_column(base)


def test_level_targets_are_learned_by_cross_entropy(batch_and_model):
    batch, model, _ = batch_and_model
    out = model(batch)
    loss, _, regression = loss_terms(model, out, batch, TrainConfig())
    loss.backward()
    # The level head's logit rows for CUBOT and CUTOP get gradient from the classification.
    rows = model.level_head.weight.grad[len(model.level_outputs):]
    assert rows.abs().sum() > 0 and torch.isfinite(loss)


def test_inconsistent_physics_settings_are_refused(synthetic_store):
    store = Store(synthetic_store)
    stats = json.loads(store.path("stats.json").read_text())
    contract = default_contract().with_levels(store.contract().n_levels)
    for bad in (dict(advective_nca=True), dict(core_top_margin=2), dict(updraft_trigger=True),
                dict(downdraft_features=True), dict(tendency_features=True), dict(closure_factor=True),
                dict(updraft_features=True, closure_factor=True),
                dict(level_targets=["PRATEC", "RTHCUTEN"]), dict(log_targets=["CUBOT"], level_targets=["CUBOT"])):
        with pytest.raises(ValueError):
            CumulusLSTM(contract, stats, ModelConfig(**bad))


def test_level_zscore_targets_round_trip(synthetic_store):
    store = Store(synthetic_store)
    contract, stats = store.contract(), json.loads(store.path("stats.json").read_text())
    model = CumulusLSTM(contract, stats, ModelConfig(hidden=8, layers=1, column_hidden=8,
                                                     target_normalisation="zscore"))
    batch = next(iter(ColumnBatches(store, "train", contract, 128, shuffle=False)))
    normalised = {model.trigger: torch.zeros(128)}
    for name in model.level_outputs + model.column_outputs:
        normalised[name], _ = model.normalised_target(name, batch[name])
    back = model.physical(normalised, batch)
    for name in model.level_outputs + model.column_outputs:
        np.testing.assert_allclose(back[name].numpy(), batch[name].numpy(), rtol=1e-5,
                                   atol=1e-6 * float(batch[name].abs().max()) + 1e-30, err_msg=name)
    # Per level: triggered training columns have mean 0 where the variable varies.
    k = model.level_outputs.index("RTHCUTEN")
    assert model.target_level_scale[k].min() > 0


def test_wind_rotation_keeps_speeds_and_turns_tendencies_with_the_wind(batch_and_model):
    from training.train import rotate_winds

    batch, model, _ = batch_and_model
    turned = rotate_winds(batch, torch.Generator().manual_seed(3))
    speed = lambda b, u, v: torch.hypot(b[u], b[v])
    torch.testing.assert_close(speed(turned, "U_PHY", "V_PHY"), speed(batch, "U_PHY", "V_PHY"))
    torch.testing.assert_close(speed(turned, "RUCUTEN", "RVCUTEN"), speed(batch, "RUCUTEN", "RVCUTEN"))
    dot = lambda b: b["U_PHY"] * b["RUCUTEN"] + b["V_PHY"] * b["RVCUTEN"]
    torch.testing.assert_close(dot(turned), dot(batch), rtol=1e-4, atol=1e-9)
    assert not torch.equal(turned["U_PHY"], batch["U_PHY"])
    assert torch.equal(turned["T_PHY"], batch["T_PHY"])
    # The hold time depends on wind speeds only.
    torch.testing.assert_close(advective_time(turned, batch["CUBOT"]), advective_time(batch, batch["CUBOT"]))


def test_updraft_channels_feed_the_network_and_decide_the_trigger(oracle_files, synthetic_store):
    """With updraft features the network sees the kernel's channels (computed when not given,
    taken as given otherwise); with the updraft trigger, TRIGGER is the kernel's decision."""
    store = Store(synthetic_store)
    stats = json.loads(store.path("stats.json").read_text())
    columns, kind, _ = _oracle_columns([p for p in oracle_files if p.name.endswith("09km_01.nc")][0])
    columns = {k: v[:512] for k, v in columns.items()}
    kind = kind[:512]
    contract = default_contract().with_levels(store.contract().n_levels)
    cfg = ModelConfig(hidden=8, layers=1, column_hidden=8, updraft_features=True, updraft_trigger=True,
                      downdraft_features=True, tendency_features=True)
    torch.manual_seed(0)
    model = CumulusLSTM(contract, stats, cfg).eval()
    plain = CumulusLSTM(contract, stats, dataclasses.replace(cfg, updraft_features=False,
                                                             updraft_trigger=False,
                                                             downdraft_features=False,
                                                             tendency_features=False))
    assert model.updraft_groups == ("downdraft", "tendencies")
    assert model.features.channels == plain.features.channels + kf.n_channels(model.updraft_groups)
    assert model.extra_inputs == [kf.INPUT] and plain.extra_inputs == []
    given = kf.with_channels(columns, model.updraft_groups)
    with torch.no_grad():
        out = model(columns)
        np.testing.assert_array_equal(out["RTHCUTEN"].numpy(), model(given)["RTHCUTEN"].numpy())
        # The kernel's channels are what the network reads: zeroing them changes the outputs.
        blind = model(given | {kf.INPUT: torch.zeros_like(given[kf.INPUT])})
    assert not np.allclose(blind["RTHCUTEN"].numpy(), out["RTHCUTEN"].numpy())
    fires = torch.sigmoid(out[model.trigger]).numpy() > 0.5
    np.testing.assert_array_equal(fires, kf.convects(given[kf.INPUT].numpy()))
    assert (fires == (kind > 0)).mean() > 0.995
    assert not any(p.requires_grad and "trigger" in n for n, p in model.named_parameters())


@pytest.mark.parametrize("normalisation", ["zscore", "std"])
def test_closure_factor_scales_the_drafts_initial_tendencies(oracle_files, synthetic_store, normalisation):
    """With closure_factor, RTHCUTEN, RQVCUTEN and RQCCUTEN are the column head's factor times the
    kernel's initial tendencies plus the per-level head: with the per-level head silenced and
    the factors set, the outputs are exactly factor x initial tendency (plus the zero point)."""
    store = Store(synthetic_store)
    stats = json.loads(store.path("stats.json").read_text())
    columns, kind, _ = _oracle_columns([p for p in oracle_files if p.name.endswith("09km_01.nc")][0])
    columns = {k: v[:256] for k, v in columns.items()}
    contract = default_contract().with_levels(store.contract().n_levels)
    cfg = ModelConfig(hidden=8, layers=1, column_hidden=8, updraft_features=True, updraft_trigger=True,
                      tendency_features=True, closure_factor=True, target_normalisation=normalisation)
    model = CumulusLSTM(contract, stats, cfg).eval()
    factors = {"RTHCUTEN": 2.5, "RQVCUTEN": 4.0, "RQCCUTEN": 1.5}
    with torch.no_grad():
        model.level_head.weight.zero_()
        model.level_head.bias.zero_()
        last = model.column_head[-1]
        last.weight[-len(factors):].zero_()
        last.bias[-len(factors):] = torch.tensor([factors[n] for n in kf.TENDENCY_OUTPUTS.values()])
        given = kf.with_channels(columns, model.updraft_groups)
        out = model.physical(model(given), given)
        zero = model.physical(model(given | {kf.INPUT: torch.zeros_like(given[kf.INPUT])}), given)
    lev, _ = kf.diagnose(columns)
    convects = kf.convects(given[kf.INPUT].numpy())
    assert convects.sum() > 50
    assert len(model.closure_targets) == len(factors)
    for channel, name in kf.TENDENCY_OUTPUTS.items():
        initial = lev[:, kf.LEVEL_FIELDS.index(channel), :model.n_core]
        added = (out[name] - zero[name]).numpy()[:, :model.n_core]
        np.testing.assert_allclose(added[convects], factors[name] * initial[convects],
                                   rtol=1e-4, atol=1e-6 * np.abs(initial).max())
