"""The network: one model for any vertical grid, MSKF's rules from the kernel, the closure on
the kernel's initial tendencies, targets zero in all data, the seed paper's design."""

import json

import numpy as np
import pytest
import torch

from emulator import features as ft
from emulator import updraft as kf
from emulator.contract import default_contract
from emulator.model import CumulusLSTM, ModelConfig, advective_time, flops_per_column
from training.columns import extract
from training.data import ColumnBatches
from training.store import Store
from training.train import TrainConfig, kind_scales, kind_weights, loss_terms, rotate_winds
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


@pytest.fixture(scope="module", autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _model(store, **settings):
    store = Store(store)
    stats = json.loads(store.path("stats.json").read_text())
    torch.manual_seed(0)
    return CumulusLSTM(store.contract(), stats, ModelConfig(**settings)).eval()


def _batch(store, n=64):
    store = Store(store)
    return next(iter(ColumnBatches(store, "train", store.contract(), n, shuffle=False)))


def test_advective_time_from_the_cloud_base_is_mskf_nca(oracle_files):
    """MSKF holds a deep column for NINT(DX / VCONV / DT) steps: from the true cloud base the
    formula reproduces every deep column's NCA of every oracle file."""
    for path in oracle_files:
        columns, kind, dt = _oracle_columns(path)
        deep = kind == DEEP
        assert deep.sum() > 1000
        nca = np.rint(advective_time(columns, columns["CUBOT"]).numpy() / dt) * dt
        np.testing.assert_array_equal(nca[deep], columns["NCA"].numpy()[deep], err_msg=path.name)


def test_kernel_design_takes_mskf_rules_from_the_kernel(oracle_store):
    """TRIGGER, CUBOT, CUTOP and NCA are the kernel's cloud, base, top and MSKF's advective
    time; no level output above the cloud top, no cloud field below the cloud base (the deep
    cloud fraction: below the level under it), no ice where the air is above freezing."""
    model = _model(oracle_store)
    batch = ft.with_kernel(_batch(oracle_store, 512))
    out = model.physical(model(batch), batch)
    lev, col = kf.diagnose({k: v.numpy() for k, v in batch.items() if k != ft.KERNEL_INPUT})
    kind = kf.kinds(col)
    fires = kind > 0
    assert 0 < fires.sum() < 512
    np.testing.assert_array_equal(out["TRIGGER"].numpy() > 0.5, fires)
    field = lambda name: col[:, kf.COLUMN_FIELDS.index(name)]  # noqa
    np.testing.assert_array_equal(out["CUBOT"].numpy()[fires], field("lcl_level")[fires])
    np.testing.assert_array_equal(out["CUTOP"].numpy()[fires], field("top_level")[fires])
    assert (out["CUBOT"].numpy()[~fires] == 45).all() and (out["CUTOP"].numpy()[~fires] == 1).all()
    expected = advective_time(batch, out["CUBOT"]).numpy()
    np.testing.assert_allclose(out["NCA"].numpy()[fires], expected[fires])
    above = np.arange(1, 45)[None, :] > out["CUTOP"].numpy()[:, None]
    for name in model.level_outputs:
        assert not out[name].numpy()[above].any(), name
    for name, under in (("CLDFRA_DP", 1), ("CLDFRA_SH", 0), ("QC_CU", 0), ("QI_CU", 0)):
        below = np.arange(1, 45)[None, :] < out["CUBOT"].numpy()[:, None] - under
        assert below[fires].any() and not out[name].numpy()[below].any(), name
    warm = batch["T_PHY"].numpy() > 273.15
    assert warm[fires].any() and (~warm[fires]).any()
    for name in ("RQICUTEN", "QI_CU"):
        assert not out[name].numpy()[warm].any() and out[name].numpy()[~warm & fires[:, None]].any(), name


def test_closure_factor_scales_the_kernels_initial_tendencies(oracle_store):
    """RTHCUTEN, RQVCUTEN, RQCCUTEN = per-level head + (a factor per column) x the kernel's
    initial tendency: with the per-level head silenced, the profile is the kernel's, scaled."""
    model = _model(oracle_store)
    with torch.no_grad():
        model.level_head.weight.zero_()
        model.level_head.bias.zero_()
    batch = ft.with_kernel(_batch(oracle_store, 256))
    out = model(batch)
    channels = batch[ft.KERNEL_INPUT]
    for name, channel in ft.CLOSURE.items():
        profile = channels[:, ft.KERNEL_INDEX[channel]]
        has = profile.abs().sum(dim=1) > 0
        ratio = out[name][has] / torch.where(profile[has] != 0, profile[has], torch.nan)
        spread = torch.nanmean((ratio - torch.nanmean(ratio, dim=1, keepdim=True)).abs(), dim=1)
        assert has.sum() > 10 and (spread < 1e-4 * torch.nanmean(ratio.abs(), dim=1)).all(), name
    assert not out["RQRCUTEN"].any()  # no closure there: the silenced head gives nothing


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_one_network_on_any_grid(oracle_store, stride):
    """The same weights on the columns' 44 levels and on coarser grids of other level counts
    (odd ones too): every level gets its outputs, and a column's outputs do not depend on the
    other columns of the batch."""
    model = _model(oracle_store, level_stride=stride)
    batch = _batch(oracle_store, 32)
    for levels in (np.arange(44), np.r_[0:20, 20:44:2], np.r_[0:9, 9:44:4]):
        sub = {k: (v[:, levels] if v.dim() == 2 and v.shape[1] == 44 else v) for k, v in batch.items()}
        sub["W"] = batch["W"][:, np.r_[levels, 44]]
        sub = ft.with_kernel(sub)
        out = model.physical(model(sub), sub)
        assert out["RTHCUTEN"].shape == (32, len(levels))
        alone = {k: v[5:6] for k, v in sub.items()}
        torch.testing.assert_close(model(alone)["RQVCUTEN"][0], model(sub)["RQVCUTEN"][5],
                                   rtol=1e-5, atol=1e-6)
    assert flops_per_column(model, 44) > flops_per_column(model, 30) > 0


def test_channels_are_physical_on_every_grid(oracle_files):
    """Position from pressure, height and layer depth; the kernel's per-layer exchanges per
    100 hPa: a grid with layers merged in pairs sees the same values where it can."""
    columns, kind, _ = _oracle_columns(oracle_files[0])
    x = ft.physical_channels(columns)
    assert x.shape == (4096, ft.N_PHYSICAL, 44) and torch.isfinite(x).all()
    np.testing.assert_allclose(x[:, 0].numpy(), np.log(columns["P_HYD"].numpy() / 1.0e5), rtol=1e-6)
    depth = x[:, 2].numpy() * 1.0e4
    dp = -np.diff(columns["P_HYD"].numpy(), axis=1)
    np.testing.assert_allclose(0.5 * (depth[:, :-1] + depth[:, 1:]), dp, rtol=0.05)
    channels = ft.kernel_channels(*kf.diagnose({k: v.numpy() for k, v in columns.items()}),
                                  {k: v.numpy() for k, v in columns.items()})
    assert channels.shape == (4096, ft.N_KERNEL, 44) and np.isfinite(channels).all()
    none = kf.kinds(kf.diagnose({k: v.numpy() for k, v in columns.items()})[1]) == 0
    assert not channels[none].any()  # zero where nothing convects


def test_targets_zero_in_all_training_data_are_exactly_zero(synthetic_store):
    """The synthetic scheme makes no rain or snow tendencies: those outputs are masked, zero
    whatever the weights, and left out of the loss."""
    model = _model(synthetic_store)
    assert set(model.zero_targets) >= {"RQRCUTEN", "RQSCUTEN"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    batch = ft.with_kernel(_batch(synthetic_store, 4096))
    out = model(batch)
    assert not out["RQRCUTEN"].any() and not out["RQSCUTEN"].any()
    assert out["RQVCUTEN"].abs().sum() > 0  # (where the kernel finds a cloud)
    cfg = TrainConfig(model=model.cfg)
    loss, _, _ = loss_terms(model, out, batch, cfg)
    batch2 = dict(batch, RQRCUTEN=batch["RQRCUTEN"] + 1.0)
    assert loss_terms(model, out, batch2, cfg)[0] == loss


def test_seed_design_learns_everything_from_scaled_inputs(oracle_store):
    """The seed paper's design: inputs over their largest training magnitude, a learned
    trigger, every output regressed; no kernel."""
    model = _model(oracle_store, design="seed", level_stride=1, layers=3)
    assert model.extra_inputs == [] and model.closure == []
    assert set(model.column_outputs) == {"PRATEC", "NCA", "CUTOP", "CUBOT"}
    batch = _batch(oracle_store, 16)
    x = model.features(batch)
    assert x.shape == (16, len(model.input_names), 44) and float(x.abs().max()) <= 1.0 + 1e-6
    out = model.physical(model(batch), batch)
    assert ((out["TRIGGER"] > 0) & (out["TRIGGER"] < 1)).all()


def test_wind_rotation_keeps_speeds_and_turns_tendencies_with_the_wind(oracle_store):
    batch = _batch(oracle_store)
    turned = rotate_winds(batch, torch.Generator().manual_seed(3))
    speed = lambda b, u, v: torch.hypot(b[u], b[v])  # noqa
    torch.testing.assert_close(speed(turned, "U_PHY", "V_PHY"), speed(batch, "U_PHY", "V_PHY"))
    torch.testing.assert_close(speed(turned, "RUCUTEN", "RVCUTEN"), speed(batch, "RUCUTEN", "RVCUTEN"))
    dot = lambda b: b["U_PHY"] * b["RUCUTEN"] + b["V_PHY"] * b["RVCUTEN"]  # noqa
    torch.testing.assert_close(dot(turned), dot(batch), rtol=1e-4, atol=1e-9)
    assert not torch.equal(turned["U_PHY"], batch["U_PHY"])
    assert torch.equal(turned["T_PHY"], batch["T_PHY"])
    # The hold time depends on wind speeds only.
    torch.testing.assert_close(advective_time(turned, batch["CUBOT"]), advective_time(batch, batch["CUBOT"]))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="model.design"):
        ModelConfig(design="mlp")
    with pytest.raises(ValueError, match="level_stride"):
        ModelConfig(level_stride=0)


def test_kind_weights_count_each_error_in_its_kinds_units(oracle_store):
    """With kind weights, a column's squared error counts in units of its output's scale over
    the columns of its kind: the loss of shallow columns alone scales by exactly that weight,
    and the kind scales are the RMS over MSKF's deep and shallow training columns."""
    model = _model(oracle_store)
    store = Store(oracle_store)
    scales = kind_scales(store, store.contract())
    assert 0 < scales["RTHCUTEN"]["shallow"] < scales["RTHCUTEN"]["deep"]
    assert scales["PRATEC"]["shallow"] == 0 and scales["CLDFRA_SH"]["deep"] == 0
    weights = kind_weights(model, scales)
    assert weights["PRATEC"]["shallow"] == 1.0 and weights["RTHCUTEN"]["shallow"] > 10
    # A kind's scale under a thousandth of the output's is round-off: counted in common units.
    overall = float(model.scale_of("RTHCUTEN"))
    tiny = {"RTHCUTEN": {"deep": overall, "shallow": 0.9e-3 * overall}}
    assert kind_weights(model, tiny)["RTHCUTEN"] == {"deep": 1.0, "shallow": 1.0}
    batch = ft.with_kernel(_batch(oracle_store, 512))
    shallow = batch[ft.KERNEL_INPUT][:, ft.KERNEL_INDEX["shallow"], 0] > 0
    assert shallow.sum() > 0
    part = {k: v[shallow] for k, v in batch.items()}
    out, cfg = model(part), TrainConfig(variable_weights={n: 0.0 for n in model.level_outputs
                                                           + model.column_outputs if n != "RTHCUTEN"})
    plain = float(loss_terms(model, out, part, cfg)[2])
    weighted = float(loss_terms(model, out, part, cfg, weights)[2])
    assert weighted == pytest.approx(plain * weights["RTHCUTEN"]["shallow"], rel=1e-5)
