"""Whole-volume inference: LR->HR geometry in world coordinates, all channels, --reverse, windows, CLI errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import randomise
from medsr.checkpoint import model_entry, save_checkpoint
from medsr.data.augment import allowed_permutations, symmetries
from medsr.degrade import hr_affine, nn_upsample, nn_upsample_array
from medsr.inference import Predictor, choose_window, detect_grid, fewest_voxels_roi, plan_windows
from medsr.io import load_volume, save_volume
from medsr.networks import create_model
from medsr.normalise import ChannelStats
from medsr.volume import Volume
from pipelines.cli import main
from pipelines.infer import reverse_untrained_by

C = 6
KW = dict(in_channels=C, width=8, depth=2, norm="none", residual=True)
X_STATS = ChannelStats(mean=[0.1 * i for i in range(C)], std=[1.0 + 0.5 * i for i in range(C)])
Y_STATS = ChannelStats(mean=[-0.2 * i for i in range(C)], std=[2.0 - 0.2 * i for i in range(C)])


def _model(random: bool = True, **kw) -> torch.nn.Module:
    model = create_model("rev_srcnn3d", **{**KW, **kw})
    if random:  # so the core is not the identity
        randomise(model)
    return model.eval()


def _checkpoint(path: Path, model: torch.nn.Module, *, kwargs=None, **data) -> Path:
    ck = {
        "model": model_entry("rev_srcnn3d", kwargs or KW, model),
        "norm": {"x": X_STATS.to_dict(), "y": Y_STATS.to_dict()},
        "data": {"factor": 2, "patch_size": 8, "channels": C, "kind": "dti", **data},
    }
    save_checkpoint(ck, path)
    return path


def _manual(model, x: np.ndarray, reverse: bool = False) -> np.ndarray:
    """denorm(model(norm(x))) in one pass, (C, X, Y, Z)."""
    s_in, s_out = (Y_STATS, X_STATS) if reverse else (X_STATS, Y_STATS)
    t = torch.from_numpy(s_in.normalise(x).astype(np.float32))[None]
    with torch.no_grad():
        y = (model.reverse if reverse else model)(t)[0].numpy()
    return s_out.denormalise(y)


def test_lr_grid_input_lands_on_prep_hr_grid(tmp_path, oblique) -> None:
    model = _model()
    ck = _checkpoint(tmp_path / "ck.pt", model)
    lr = Volume(np.random.rand(C, 7, 8, 6).astype(np.float32), oblique, name="lr")
    save_volume(lr, tmp_path / "lr.nii.gz")
    out = tmp_path / "sr.nii.gz"
    assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "lr.nii.gz"), "--output", str(out),
                 "--device", "cpu", "--window", "0", "--quiet"]) == 0
    sr = load_volume(out)
    # Geometry: the HR grid prep writes, checked in world coordinates.
    assert sr.spatial_shape == (14, 16, 12)
    assert np.allclose(sr.affine, hr_affine(lr.affine, 2), atol=1e-5)
    assert np.allclose(sr.world(np.array([0.5, 0.5, 0.5])), lr.world(np.zeros(3)), atol=1e-4)  # LR centre = block centre
    assert np.allclose(sr.world(np.array([6.5, 2.5, 10.5])), lr.world(np.array([3, 1, 5])), atol=1e-4)
    assert np.allclose(sr.voxel_size, np.array(lr.voxel_size) / 2, atol=1e-5)
    # Values: all 6 channels, each equal to the manual computation (the official code kept only channel 0).
    expected = _manual(model, nn_upsample(lr, 2).data)
    assert sr.channels == C
    np.testing.assert_allclose(sr.data, expected, atol=1e-4)
    assert all(np.abs(sr.data[c] - sr.data[0]).max() > 1e-3 for c in range(1, C))
    # The same data on the HR grid (prep's lr_up) gives the same output.
    save_volume(nn_upsample(lr, 2), tmp_path / "lr_up.nii.gz")
    assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "lr_up.nii.gz"), "--output",
                 str(tmp_path / "sr2.nii.gz"), "--window", "0", "--quiet"]) == 0
    sr2 = load_volume(tmp_path / "sr2.nii.gz")
    np.testing.assert_allclose(sr2.data, sr.data, atol=1e-5)
    assert np.allclose(sr2.affine, sr.affine, atol=1e-5)


def test_reverse_runs_g_through_the_inverse_core(tmp_path, oblique) -> None:
    model = _model()
    ck = _checkpoint(tmp_path / "ck.pt", model)
    hr = Volume(np.random.rand(C, 12, 10, 8).astype(np.float32), oblique, name="hr")
    save_volume(hr, tmp_path / "hr.nii.gz")
    out = tmp_path / "g.nii.gz"
    assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "hr.nii.gz"), "--output", str(out),
                 "--reverse", "--window", "0", "--quiet"]) == 0
    g = load_volume(out)
    assert g.spatial_shape == hr.spatial_shape and np.allclose(g.affine, hr.affine, atol=1e-5)  # same grid
    # G = Dec_X(C^-1(Enc_Y(y))) + y, computed by hand, with y-stats in and x-stats out.
    y = torch.from_numpy(Y_STATS.normalise(hr.data).astype(np.float32))[None]
    with torch.no_grad():
        h = model.enc_y(y)
        manual = X_STATS.denormalise((model.dec_x(model.core.inverse(h)) + y)[0].numpy())
        # and the core really is inverted: C^-1(C(h)) == h
        assert torch.allclose(model.core.inverse(model.core(h)), h, atol=1e-4)
    np.testing.assert_allclose(g.data, manual, atol=1e-4)
    fwd = _manual(model, hr.data)
    assert np.abs(fwd - g.data).max() > 1e-2  # forward and reverse are different maps


def test_windows_cover_and_blend_exactly(tmp_path) -> None:
    # A pointwise model (zero core at init, 1^3 encoder...) is window-invariant: with overlapping
    # windows the Gaussian blend must reproduce the single pass, and MONAI must run the planned count.
    model = create_model("srcnn3d", in_channels=C, width=4).eval()
    with torch.no_grad():
        model.enc_x[0].weight.zero_()
        model.enc_x[0].weight[:, :, 1, 1, 1].normal_()  # a 3^3 conv that only looks at its centre
    calls = []
    fwd = model.forward
    model.forward = lambda x: (calls.append(tuple(x.shape[2:])), fwd(x))[1]  # type: ignore[method-assign]
    ck = {"model": model_entry("srcnn3d", dict(in_channels=C, width=4), model), "data": {"factor": 2, "channels": C}}
    pred = Predictor(model, X_STATS, Y_STATS, ck, "cpu")
    vol = Volume(np.random.rand(C, 20, 17, 12).astype(np.float32), np.eye(4), name="v")
    plan = choose_window(vol.spatial_shape, ck, window=8, overlap=0.25)
    out = pred.predict(vol, plan=plan)
    assert len(calls) == plan.n_windows > 1 and set(calls) == {(8, 8, 8)}
    np.testing.assert_allclose(out.data, _manual(model, vol.data), atol=1e-4)
    assert plan.overlap_factor == pytest.approx(plan.n_windows * 512 / (20 * 17 * 12))


def test_window_rule() -> None:
    none = {"model": {"kwargs": {"width": 64, "norm": "none"}}, "data": {"patch_size": 24}}
    inst = {"model": {"kwargs": {"width": 64, "norm": "instance"}}, "data": {"patch_size": 24}}
    hcp = (145, 174, 145)
    p = choose_window(hcp, inst)
    assert p.roi == (24, 24, 24) and p.overlap == 0.5  # instance norm: training conditions
    with pytest.raises(ValueError, match="instance norm.*patch size 24"):
        choose_window(hcp, inst, window=48)
    small = choose_window((64, 64, 64), none)
    assert small.n_windows == 1 and small.overlap_factor == 1.0  # fits: one pass
    big = choose_window(hcp, none, memory_budget=2.75e9)
    assert big.overlap_factor < 1.2 and np.prod(big.roi) * 20 * 64 <= 2.75e9
    cubes = choose_window(hcp, none, window=48, overlap=0.25)
    assert cubes.overlap_factor > 2 * big.overlap_factor  # why large windows win
    # The search never exceeds the budget and returns MONAI-consistent counts.
    roi = fewest_voxels_roi((100, 90, 80), 0.25, 100_000)
    assert np.prod(roi) <= 100_000
    assert plan_windows((100, 90, 80), roi, 0.25).n_windows >= 2


def test_detect_grid(oblique) -> None:
    v = Volume(np.zeros((1, 4, 4, 4), np.float32), oblique, name="x")  # voxel (1.5, 1.25, 2.0)
    assert detect_grid(v, 2, path="/d/lr.nii.gz") == "lr"
    assert detect_grid(v, 2, path="/d/lr_up.nii.gz") == "hr"
    assert detect_grid(v, 2, path="/d/sub01_T1.nii.gz") == "hr"
    assert detect_grid(v, 2, train_voxel_size=(0.75, 0.625, 1.0), path="/d/any.nii.gz") == "lr"
    assert detect_grid(v, 2, train_voxel_size=(1.5, 1.25, 2.0), path="/d/lr.nii.gz") == "hr"
    with pytest.raises(ValueError, match="matches neither"):
        detect_grid(v, 2, train_voxel_size=(1.0, 1.0, 1.0), path="/d/any.nii.gz")


def test_instance_norm_checkpoint_uses_patch_windows(tmp_path) -> None:
    kw = {**KW, "norm": "instance"}
    model = _model(**kw)
    ck = _checkpoint(tmp_path / "ck.pt", model, kwargs=kw)
    pred = Predictor.from_checkpoint(ck, "cpu")
    vol = Volume(np.random.rand(C, 16, 12, 12).astype(np.float32), np.eye(4), name="v")
    plan = choose_window(vol.spatial_shape, pred.ck)
    assert plan.roi == (8, 8, 8) and plan.overlap == 0.5
    out = pred.predict(vol, plan=plan)
    assert out.data.shape == vol.data.shape and np.isfinite(out.data).all()


def test_batch_mode_folder_and_manifest(tmp_path, oblique) -> None:
    from medsr.manifest import write_manifest

    model = _model()
    ck = _checkpoint(tmp_path / "ck.pt", model)
    src = tmp_path / "in"
    rows = []
    for s in ("s1", "s2"):
        v = Volume(np.random.rand(C, 6, 6, 4).astype(np.float32), oblique, name=s)
        save_volume(v, src / f"{s}.nii.gz")
        rows.append({"subject": s, "hr": str(src / f"{s}.nii.gz"), "lr": str(src / f"{s}.nii.gz"),
                     "lr_up": str(src / f"{s}.nii.gz"), "mask": str(src / f"{s}.nii.gz"), "status": "ok",
                     "factor": 2, "kind": "dti"})
    assert main(["infer", "--checkpoint", str(ck), "--input", str(src), "--output", str(tmp_path / "o1"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["s1.nii.gz", "s2.nii.gz"]
    man = write_manifest(tmp_path / "manifest.csv", rows)
    assert main(["infer", "--checkpoint", str(ck), "--input", str(man), "--output", str(tmp_path / "o2"), "--quiet"]) == 0
    for s in ("s1", "s2"):
        a, b = load_volume(tmp_path / "o1" / f"{s}.nii.gz"), load_volume(tmp_path / "o2" / f"{s}.nii.gz")
        np.testing.assert_allclose(a.data, b.data, atol=1e-6)  # same inputs (HR grid) -> same outputs


def test_cli_errors_are_one_line_and_leave_no_file(tmp_path, capsys, oblique) -> None:
    model = _model()
    ck = _checkpoint(tmp_path / "ck.pt", model)
    three = tmp_path / "three.nii.gz"
    save_volume(Volume(np.random.rand(3, 6, 6, 6).astype(np.float32), oblique), three)
    out = tmp_path / "out" / "sr.nii.gz"
    argv = ["infer", "--checkpoint", str(ck), "--output", str(out), "--quiet", "--input"]
    assert main(argv + [str(three)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "three.nii.gz: 3 channel(s)" in err and "trained on 6" in err
    nan = Volume(np.random.rand(C, 6, 6, 6).astype(np.float32), oblique, name="nan")
    nan.data[2, 1, 1, 1] = np.nan
    save_volume(nan, tmp_path / "nan.nii.gz")
    assert main(argv + [str(tmp_path / "nan.nii.gz")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no partial output, no temp file
    assert main(argv + [str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz: input not found" in capsys.readouterr().err
    # Existing output: refused without --overwrite, untouched.
    good = tmp_path / "good.nii.gz"
    save_volume(Volume(np.random.rand(C, 6, 6, 6).astype(np.float32), oblique), good)
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"keep")
    assert main(argv + [str(good)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(argv + [str(good), "--overwrite"]) == 0
    assert load_volume(out).channels == C
    assert main(["infer", "--checkpoint", str(tmp_path / "nope.pt"), "--input", str(good), "--output",
                 str(tmp_path / "x.nii.gz")]) == 2
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err


def test_bench_infer_plans_the_default_windows(capsys) -> None:
    # The benchmark's cheap part: the default rule beats the cubic windows on overlap at HCP size.
    assert main(["bench", "infer", "--plan-only", "--configs", "48:0.25,auto"]) == 0
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[1:]}
    assert float(lines["auto:auto"][4]) < 1.2 < 2.0 < float(lines["48:0.25"][4])


def _espcn_predictor(random: bool, kind: str = "dti") -> Predictor:
    kw = dict(in_channels=C, factor=2, width=8, depth=2, base="cubic", memory_efficient=False)
    model = create_model("rev_espcn3d", **kw)
    if random:
        randomise(model)
    ck = {"model": model_entry("rev_espcn3d", kw, model), "data": {"factor": 2, "patch_size": 8, "channels": C,
                                                                    "kind": kind}}
    # Shared statistics (data.norm_stats: shared), as the LR-grid configs train: a cubic base in
    # normalised units is then the cubic interpolation of the raw tensors.
    return Predictor(model.eval(), Y_STATS, Y_STATS, ck, "cpu")


def _lr_up(shape=(12, 16, 10), seed: int = 0) -> Volume:
    lr = np.random.default_rng(seed).normal(size=(C,) + tuple(s // 2 for s in shape)).astype(np.float32)
    return Volume(nn_upsample_array(lr, 2), np.eye(4), name="v")


@pytest.mark.parametrize("tta", ["flip", "full"])
def test_tta_views_are_moved_back_exactly(tta) -> None:
    # A fresh RevESPCN is its cubic base, which commutes with every flip and axis permutation
    # (a separable, symmetric kernel) once the DTI components move with the axes: averaging
    # the views must give back the plain prediction. A view moved back wrongly (a missing sign,
    # a swapped component) would not.
    pred = _espcn_predictor(random=False)
    vol = _lr_up()
    plain = pred.predict(vol, window=0).data
    np.testing.assert_allclose(pred.predict(vol, window=0, tta=tta).data, plain, rtol=1e-4, atol=1e-4)


def test_tta_prediction_commutes_with_the_symmetries() -> None:
    # The average over the 48 views is equivariant by construction, whatever the weights: moving
    # the input by a symmetry moves the output by the same symmetry (DTI signs included).
    from medsr.data.augment import symmetry_volume

    pred = _espcn_predictor(random=True)
    vol = _lr_up()
    out = pred.predict(vol, window=0, tta="full").data
    for perm, axes in [((0, 1, 2), (1,)), ((2, 0, 1), (0, 2))]:
        moved = Volume(symmetry_volume(vol.data, perm, axes, True), np.eye(4), name="v")
        np.testing.assert_allclose(pred.predict(moved, window=0, tta="full").data,
                                   symmetry_volume(out, perm, axes, True), rtol=1e-4, atol=1e-4)
    # Without TTA a random network is not equivariant, so the test above can fail.
    plain = pred.predict(vol, window=0).data
    moved = Volume(symmetry_volume(vol.data, (0, 1, 2), (1,), True), np.eye(4), name="v")
    assert not np.allclose(pred.predict(moved, window=0).data, symmetry_volume(plain, (0, 1, 2), (1,), True),
                           atol=1e-3)
    with pytest.raises(ValueError, match="none, flip, full or auto"):
        pred.predict(vol, window=0, tta="rotate")


def test_tta_auto_follows_the_training_augmentation() -> None:
    pred = _espcn_predictor(random=True)
    assert pred.resolve_tta("auto") == "none"
    pred.ck["data"]["flip"] = True
    assert Predictor(pred.model, Y_STATS, Y_STATS, pred.ck, "cpu").resolve_tta("auto") == "flip"
    vol = _lr_up()
    # --tta full on anisotropic voxels swaps only the axes that look alike: x <-> y here (16 views).
    aniso = Volume(vol.data, np.diag([1.0, 1.0, 2.0, 1.0]), name="aniso.nii.gz")
    views = symmetries("full", allowed_permutations(aniso.voxel_size, pred.factor))
    assert len(views) == 16
    plan = pred.plan(aniso.spatial_shape, 0, None, False)
    moved = [perm for (perm, _), _ in pred.predict_views(aniso, views, plan=plan)]
    assert sorted({p for p in moved}) == [(0, 1, 2), (1, 0, 2)] and len(moved) == 16


@pytest.mark.parametrize("shape, roi, overlap", [
    ((20, 17, 9), (8, 8, 8), 0.25), ((20, 17, 9), (8, 6, 9), 0.5), ((13, 13, 13), (13, 5, 4), 0.0),
    ((16, 11, 7), (16, 11, 7), 0.25), ((12, 10, 9), (5, 7, 3), 0.9), ((9, 9, 9), (20, 4, 9), 0.125),
])
def test_window_count_is_the_one_monai_runs(shape, roi, overlap):
    """plan_windows counts windows without MONAI's private helpers; the count equals the windows
    monai.inferers.sliding_window_inference (public API) actually runs."""
    from monai.inferers import sliding_window_inference

    calls = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    clamped = tuple(min(r, s) for r, s in zip(roi, shape))
    sliding_window_inference(torch.zeros(1, 1, *shape), clamped, 1, predictor, overlap=overlap)
    assert plan_windows(shape, roi, overlap).n_windows == sum(calls)


@pytest.mark.parametrize("window", [0, 8])
def test_tta_views_in_batches_equal_one_view_at_a_time(window, monkeypatch) -> None:
    """Views batched into one model call give the same predictions as one view per call (views of a
    non-cubic volume: several view shapes; windowed and whole-volume passes), under one progress bar
    that counts every window of every view."""
    import tqdm

    from medsr.data.augment import symmetries

    pred = Predictor(_model(), X_STATS, Y_STATS, {"model": {"kwargs": KW}, "data": {"factor": 2, "channels": C}},
                     "cpu")
    vol = Volume(np.random.default_rng(3).normal(size=(C, 12, 10, 11)).astype(np.float32), np.eye(4), name="v")
    plan = pred.plan(vol.spatial_shape, window)
    views = [v for v in symmetries("full") if v[1] in ((), (0, 2))][:4]  # 2 permutations x 2 flips: 2 shapes
    one = dict(pred.predict_views(vol, views, plan=plan, views_per_call=1))
    bars = []

    class Bar(tqdm.tqdm):
        def close(self) -> None:
            if not bars or bars[-1][2] is not self:
                bars.append((self.total, self.n, self))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    batched = dict(pred.predict_views(vol, views, plan=plan, views_per_call=3, progress=True))
    assert batched.keys() == one.keys() == set(views)
    for v in views:
        np.testing.assert_allclose(batched[v], one[v], rtol=1e-5, atol=1e-5)
    assert [b[:2] for b in bars] == [(4 * plan.n_windows, 4 * plan.n_windows)]
    assert pred.views_per_call(plan, 48, 12 * 10 * 11) == 48  # small volume: every view in one call
    assert pred.views_per_call(plan, 8, 145 * 174 * 145) == 4  # HCP size: 4 x 205 MB of stitching buffers


@pytest.mark.parametrize("train, says", [
    ({"mode": "paired_l1", "lambda_reverse": 0.0}, "train.lambda_reverse: 0"),
    ({"mode": "paired_l1", "lambda_reverse": 1.0}, ""),
    ({"mode": "unpaired", "reverse": "degradation", "lambda_degrade": 0.0}, "train.reverse: degradation"),
    ({"mode": "unpaired"}, ""),
])
def test_reverse_warns_when_the_checkpoint_never_trained_g(tmp_path, oblique, capsys, train, says) -> None:
    # The training mode says which directions it trained; infer --reverse warns (once, on stderr) for an untrained G.
    ck = _checkpoint(tmp_path / "ck.pt", _model())
    state = torch.load(ck, map_location="cpu", weights_only=False)
    state["config"] = {"data": {"norm_stats": "shared"}, "train": train}
    save_checkpoint(state, ck)
    assert reverse_untrained_by(state) == says
    save_volume(Volume(np.random.rand(C, 12, 10, 8).astype(np.float32), oblique, name="hr"), tmp_path / "hr.nii.gz")
    assert main(["infer", "--checkpoint", str(ck), "--input", str(tmp_path / "hr.nii.gz"), "--output",
                 str(tmp_path / "g.nii.gz"), "--reverse", "--window", "0", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("never learned") == (1 if says else 0)
    assert not says or f"was trained with {says}, so its G never learned" in err
