"""medsr.figures: which files each kind of data gets, one implementation behind evaluate and report, and
the properties a reader relies on (windows ignore bright CSF, errors on a symmetric scale, every block with
a colour bar, the same picture whatever the storage order of the file, colour FA colours by direction)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsr.figures import column_order, draw_subject, figure_paths, panels, subject_figures
from medsr.figures.maps import brain_window, ras_view, reorient, slice_maps, describe
from medsr.volume import Volume
from pipelines.cli import main

SHAPE = (16, 18, 14)


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[3:-3, 3:-3, 3:-3] = True
    return m


def _scalar(seed: int) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.linspace(0, 1, s) for s in SHAPE], indexing="ij"))
    return (1.0 + 0.4 * np.sin(5 * g[0] + seed) * np.cos(3 * g[1]) + 0.2 * g[2]).astype(np.float32)


def _dti(seed: int) -> np.ndarray:
    """A positive-definite tensor field (6, X, Y, Z), mm^2/s, principal direction turning with x."""
    g = np.stack(np.meshgrid(*[np.linspace(0, 1, s) for s in SHAPE], indexing="ij"))
    th = 1.5 * g[0] + seed
    e = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)])
    lam1, lam2 = 1.6e-3, 0.4e-3
    d = lam2 * np.eye(3)[:, :, None, None, None] + (lam1 - lam2) * e[:, None] * e[None, :]
    return np.stack([d[0, 0], d[0, 1], d[0, 2], d[1, 1], d[1, 2], d[2, 2]]).astype(np.float32)


@pytest.fixture
def scalar_prep(tmp_path, oblique) -> Path:
    """Two scalar subjects (oblique affine) through ``medsr prep volumes``; a noisy 'model' folder."""
    for i, s in enumerate(("t1a", "t1b")):
        d = tmp_path / "vol" / s
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(_scalar(i), oblique), d / "image.nii.gz")
        nib.save(nib.Nifti1Image(_mask().astype(np.uint8), oblique), d / "mask.nii.gz")
    assert main(["prep", "volumes", "--input", str(tmp_path / "vol"), "--output", str(tmp_path / "prep")]) == 0
    from medsr.io import load_volume, save_volume

    rng = np.random.default_rng(0)
    for s in ("t1a", "t1b"):
        hr = load_volume(tmp_path / "prep" / s / "hr.nii.gz")
        save_volume(hr.with_data(hr.data + 0.01 * rng.standard_normal(hr.data.shape).astype(np.float32)),
                    tmp_path / "model" / f"{s}.nii.gz")
    return tmp_path / "prep" / "manifest.csv"


def test_scalar_evaluate_and_report_draw_the_same_files_through_one_function(scalar_prep, tmp_path, monkeypatch):
    import pipelines.evaluate

    loops = []  # both walk the manifest through one loop
    real_loop = pipelines.evaluate.manifest_volumes
    monkeypatch.setattr(pipelines.evaluate, "manifest_volumes",
                        lambda *a, **k: loops.append(k["desc"]) or real_loop(*a, **k))
    model = str(tmp_path / "model")
    assert main(["evaluate", "--manifest", str(scalar_prep), "--predictions", model, "--figures",
                 str(tmp_path / "figs"), "--quiet"]) == 0
    assert main(["report", "--manifest", str(scalar_prep), "--predictions", model, "--output",
                 str(tmp_path / "rep")]) == 0
    assert loops == ["subjects", "figures"]
    for s in ("t1a", "t1b"):
        assert [p.name for p in figure_paths(tmp_path, s, "scalar")] == [f"{s}_intensity.png"]
        a, b = (tmp_path / "figs" / f"{s}_intensity.png").read_bytes(), (tmp_path / "rep" / f"{s}_intensity.png").read_bytes()
        assert a[:4] == b"\x89PNG" and a == b
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["t1a_intensity.png", "t1b_intensity.png"]
    # An existing figure is replaced only with --overwrite (evaluate and report alike), before any work.
    argv = ["report", "--manifest", str(scalar_prep), "--predictions", model, "--output", str(tmp_path / "rep")]
    assert main(argv) == 2
    assert main(argv + ["--overwrite"]) == 0


def test_dti_gets_md_fa_and_colour_fa(tmp_path, oblique):
    hr = Volume(_dti(0), oblique, name="hr")
    methods = [("cubic", hr.with_data(hr.data * 1.05)), ("mine", hr.with_data(hr.data * 0.98)),
               ("nn", hr.with_data(hr.data * 1.1))]
    paths = subject_figures(tmp_path, "s1", hr=hr, mask=_mask(), methods=methods)
    assert [p.name for p in paths] == ["s1_md.png", "s1_fa.png", "s1_colour_fa.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(FileExistsError, match="s1_md.png"):
        subject_figures(tmp_path, "s1", hr=hr, mask=_mask(), methods=methods, overwrite=False)


def test_column_order_models_first_then_baselines_in_fixed_order():
    v = Volume(np.zeros((1, 2, 2, 2), np.float32), np.eye(4))
    got = column_order([("cubic", v), ("b_model", v), ("nn", v), ("a_model", v), ("linear", v)])
    assert [n for n, _ in got] == ["b_model", "a_model", "nn", "linear", "cubic"]


def test_window_lets_bright_csf_saturate():
    rng = np.random.default_rng(0)
    tissue = rng.normal(0.75, 0.05, 6000)
    csf = rng.normal(3.0, 0.05, 4000)  # 40 % of the mask: the CSF maximum must not set the window
    lo, hi = brain_window(np.concatenate([tissue, csf]), low=0.0)
    assert lo == 0.0 and np.percentile(tissue, 99) < hi < 1.5
    assert brain_window(tissue) == pytest.approx((np.percentile(tissue, 1), np.percentile(tissue, 99)), rel=0.05)


def test_every_block_has_a_colour_bar_and_errors_are_symmetric(oblique):
    hr = Volume(_dti(1), oblique, name="hr")
    figs = draw_subject("s", hr=hr, mask=_mask(), methods=[("m", hr.with_data(hr.data * 1.02)),
                                                           ("cubic", hr.with_data(hr.data * 0.97))])
    assert list(figs) == ["md", "fa", "colour_fa"]
    try:
        # The colour bars and the colour-FA key: the axes labelled on their right (insets included).
        axes = [a for f in figs.values() for ax in f.axes for a in (ax, *ax.child_axes)]
        bars = [ax.get_ylabel() for ax in axes if ax.yaxis.get_label_position() == "right"]
        assert len(bars) == 6  # value and error bar of MD, FA and colour FA
        assert any("MD (10$^{-3}$ mm$^2$/s)" in b for b in bars) and any("FA (unitless)" in b for b in bars)
        assert any("principal direction" in b for b in bars) and any("degrees" in b for b in bars)
        images = [im for f in (figs["md"], figs["fa"]) for ax in f.axes for im in ax.get_images()]
        signed = [im for im in images if im.get_cmap().name.startswith("RdBu_r")]
        assert len(signed) == 2 * 2 * 3  # MD and FA errors of 2 methods in 3 views
        assert all(im.get_clim()[0] == -im.get_clim()[1] and im.get_clim()[1] > 0 for im in signed)
    finally:
        for f in figs.values():
            panels.pyplot().close(f)


def test_display_does_not_depend_on_storage_order(tmp_path, oblique):
    """Flipping and permuting the stored axes (with the matching affine) draws the identical picture."""
    data = _scalar(3)[None]
    a = Volume(data, oblique, name="a")
    perm = (2, 0, 1)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[perm[0]] - 1  # new i = n - 1 - old i
    p = np.eye(4)[:, list(perm) + [3]]  # new voxel axes = old axes (2, 0, 1)
    affine_b = oblique @ p @ flip
    data_b = np.flip(np.transpose(data, (0, 3, 1, 2)), axis=1).copy()
    mask_b = np.flip(np.transpose(_mask(), perm), axis=0).copy()
    b = Volume(data_b, affine_b, name="b")
    assert np.allclose(b.world(np.array([[0.0, 0.0, 0.0]])), a.world(np.array([[0.0, 0.0, SHAPE[2] - 1.0]])))
    (pa,) = subject_figures(tmp_path / "a", "s", hr=a, mask=_mask(), methods=[("m", a.with_data(data * 1.1))])
    (pb,) = subject_figures(tmp_path / "b", "s", hr=b, mask=mask_b, methods=[("m", b.with_data(data_b * 1.1))])
    assert pa.read_bytes() == pb.read_bytes()


def test_colour_fa_is_red_for_a_left_right_fibre_whatever_the_storage_axis():
    """A fibre along the voxel axis nearest to R-L is red, even when that axis is stored second."""
    affine = np.array([[0, 1.25, 0, 0], [1.25, 0, 0, 0], [0, 0, 1.25, 0], [0, 0, 0, 1.0]])  # voxel j -> R
    order, flips = ras_view(affine)
    assert order == (1, 0, 2)
    t = np.zeros((6, 4, 4, 4), np.float32)
    t[0], t[3], t[5] = 0.4e-3, 1.7e-3, 0.4e-3  # principal direction: voxel axis 1 (Dyy)
    spec = describe("dti", t, np.ones((4, 4, 4), bool))
    rgb = slice_maps("dti", reorient(t, order, flips)[..., 2], spec, order)["colour_fa"]
    assert rgb[..., 0].min() > 0.5 and rgb[..., 1:].max() < 1e-6


def test_demo_figures_tensor_components_phantom_and_preview(tmp_path, oblique):
    from data_prep.phantom import LABELS
    from medsr.figures.phantom import draw_labels, labels_figure
    from medsr.figures.preview import preview_figure
    from medsr.figures.tensors import tensor_components_figure

    hr = Volume(_dti(2), oblique, name="hr")
    lr = Volume(hr.data[:, ::2, ::2, ::2].copy(), oblique @ np.diag([2.0, 2.0, 2.0, 1.0]), name="lr")
    p = tensor_components_figure(tmp_path / "tc.png", hr=hr, mask=_mask(), lr=lr,
                                 methods=[("cubic", hr), ("model", hr)])
    assert p.read_bytes()[:4] == b"\x89PNG"
    labels = np.zeros(SHAPE, np.uint8)
    labels[_mask()] = LABELS["wm"]
    labels[6:9, 6:9, 6:9] = LABELS["csf"]
    fig = draw_labels(b0=_scalar(0), tensor=hr.data, labels=labels, label_names=LABELS, affine=oblique,
                      voxel_size=hr.voxel_size)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]
    assert legends == [["1 csf", "3 wm"]]  # the tissues present, by code
    assert labels_figure(tmp_path / "ph.png", b0=_scalar(0), tensor=hr.data, labels=labels, label_names=LABELS,
                         affine=oblique, voxel_size=hr.voxel_size).read_bytes() == panels.png_bytes(fig)
    q = preview_figure(tmp_path / "samples" / "final.png",
                       [("LR input: MD (1e-3 mm^2/s)", np.ones((8, 8))), ("HR: MD (1e-3 mm^2/s)", np.zeros((8, 8)))],
                       title="paired_l1 step 3")
    assert q.read_bytes()[:4] == b"\x89PNG"
