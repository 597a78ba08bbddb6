"""The 2D module: aligned data, Cityscapes/Maps metrics, 2D generators, training modes, memory trend."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import random_twins
from medsr.networks import create_model
from medsr.twod import cityscapes as cs
from medsr.data.sampler import EpochBatchSampler
from medsr.twod.aligned import dataset_from_folder, list_images, read_aligned
from medsr.twod.datasets import AlignedItems
from medsr.twod.metrics import mae, psnr, ssim, to_uint8_range
from medsr.twod.synthetic import make_aligned_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- data
def _items(root: Path, size: int, split: str = "train", **kwargs) -> AlignedItems:
    return AlignedItems(list_images(root, split), size, label_b=kwargs.pop("label_b", False), **kwargs)


def _save(path: Path, a: np.ndarray, b: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([a, b], axis=1).astype(np.uint8)).save(path)


def test_split_and_resize(tmp_path: Path) -> None:
    # A = left half red with a white top-left quadrant, B = right half blue: halves must not mix.
    a = np.zeros((40, 40, 3), np.uint8)
    a[..., 0] = 200
    a[:20, :20] = 255
    b = np.zeros((40, 40, 3), np.uint8)
    b[..., 2] = 180
    _save(tmp_path / "train" / "x.png", a, b)
    ra, rb = read_aligned(tmp_path / "train" / "x.png", 16)
    assert ra.shape == rb.shape == (16, 16, 3)
    assert (rb[..., 2] == 180).all() and (rb[..., :2] == 0).all()
    assert (ra[:6, :6] == 255).all() and (ra[12:, 12:, 0] == 200).all() and (ra[12:, 12:, 1:] == 0).all()
    item = _items(tmp_path, 16, with_name=True)[0]
    assert item["name"] == "x"
    assert item["x"].shape == item["y"].shape == (3, 16, 16)
    assert item["x"].dtype == torch.float32
    assert item["x"].max() == 1.0 and item["y"].min() == -1.0  # 255 -> 1, 0 -> -1
    assert torch.allclose(item["y"][2], torch.full((16, 16), 180 / 127.5 - 1))


def test_label_half_keeps_palette_colours(tmp_path: Path) -> None:
    root = make_aligned_dataset(tmp_path / "city", "cityscapes", n_train=2, n_val=1, size=48)
    pairs = _items(root, 20, label_b=True)
    b = to_uint8_range(pairs[0]["y"])  # nearest-neighbour resize: no blended colours
    colours = {tuple(c) for c in b.reshape(-1, 3).astype(int)}
    palette = {tuple(c) for c in cs.TRAIN_COLOURS.astype(int)}
    assert colours <= palette
    seg = _items(root, 20, label_b=True, target="labels")[0]
    assert seg["y"].dtype == torch.int64 and seg["y"].shape == (20, 20)
    assert np.array_equal(seg["y"].numpy(), cs.colours_to_train_ids(b))


def test_bad_images_named(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "train" / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png.*width = 2 x height.*50x30"):
        _items(tmp_path, 16)[0]
    (tmp_path / "train" / "odd.png").unlink()
    (tmp_path / "train" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"broken\.jpg: cannot read image"):
        _items(tmp_path, 16)[0]
    with pytest.raises(FileNotFoundError, match="val"):
        _items(tmp_path, 16, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        _items(tmp_path, 16, "empty")


def test_dataset_told_by_the_nearest_folder_name(tmp_path: Path) -> None:
    assert dataset_from_folder(tmp_path / "Maps" / "cityscapes_small") == "cityscapes"
    assert dataset_from_folder(tmp_path / "cityscapes" / "maps") == "maps"
    assert dataset_from_folder(tmp_path / "photos") is None


def test_unpaired_items_shuffle_independently(tmp_path: Path) -> None:
    """The training path of the unpaired mode: the shared sampler draws A and B apart."""
    root = make_aligned_dataset(tmp_path / "m", "maps", n_train=6, n_val=1, size=16)
    ds = _items(root, 16)
    sampler = EpochBatchSampler(len(ds), 1, seed=3, unpaired=True)
    pairs = _items(root, 16)
    a_all = [pairs[i]["x"] for i in range(6)]
    b_all = [pairs[i]["y"] for i in range(6)]

    def which(t: torch.Tensor, pool: list[torch.Tensor]) -> int:
        return next(i for i, p in enumerate(pool) if torch.equal(p, t))

    epoch = [0]

    def epoch_order() -> tuple[list[int], list[int]]:
        sampler.set_epoch(epoch[0])
        items = [ds[item] for batch in sampler for item in batch]
        return [which(it["x"], a_all) for it in items], [which(it["y"], b_all) for it in items]

    ia, ib = epoch_order()
    assert sorted(ia) == sorted(ib) == list(range(6))  # each image once per epoch
    assert ia != ib  # A and B no longer travel together
    epoch[0] = 1
    ja, jb = epoch_order()
    assert (ja, jb) != (ia, ib)  # reshuffled per epoch
    epoch[0] = 0
    assert epoch_order() == (ia, ib)  # deterministic (resume, workers)


# ----------------------------------------------------------------------------- metrics
def test_image_metrics_known_values() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.float64)
    assert mae(img, img) == 0.0
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0)
    assert mae(np.zeros((16, 16)), np.full((16, 16), 255.0)) == 255.0
    assert psnr(np.zeros((16, 16)), np.full((16, 16), 255.0)) == pytest.approx(0.0)
    shifted = np.clip(img + 10, None, None)
    assert mae(img, shifted) == pytest.approx(10.0)
    assert psnr(img, shifted) == pytest.approx(20 * math.log10(255 / 10))
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255)
    s = ssim(img, noisy)
    assert 0.0 < s < 0.9 and s == pytest.approx(ssim(noisy, img))
    # -1..1 network output -> 0..255
    t = torch.tensor([[[-1.0, 0.0], [1.0, 2.0]]])
    assert to_uint8_range(t)[..., 0].tolist() == [[0.0, 128.0], [255.0, 255.0]]


def test_confusion_matrix_scores() -> None:
    gt = np.array([0, 0, 1, 1, 1, cs.IGNORE])
    pred = np.array([0, 1, 1, 1, cs.IGNORE, 0])  # one miss, one "ignore" prediction, one unscored
    conf = cs.confusion_matrix(gt, pred, num_classes=2)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 1]]
    s = cs.segmentation_scores(conf)
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["class_acc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # IoU0 = 1 / (2 + 1 - 1); IoU1 = 2 / (3 + 3 - 2)
    assert s["class_iou"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    perfect = cs.segmentation_scores(cs.confusion_matrix(np.arange(19), np.arange(19)))
    assert perfect == {"pixel_acc": 1.0, "class_acc": 1.0, "class_iou": 1.0}


def test_colour_mapping() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 19, (8, 8))
    rgb = cs.train_ids_to_colours(ids).astype(np.float64) + rng.integers(-6, 7, (8, 8, 3))  # JPEG-ish
    assert np.array_equal(cs.colours_to_train_ids(rgb), ids)
    assert np.array_equal(cs.prediction_to_train_ids(rgb), ids)
    ground = np.full((2, 2, 3), (81, 0, 81), np.float64)  # 'ground': not an evaluated class
    assert (cs.colours_to_train_ids(ground) == cs.IGNORE).all()
    black = np.zeros((2, 2, 3))
    assert (cs.prediction_to_train_ids(black) == cs.IGNORE).all()


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    "name,width,depth,millions",
    [("resnet2d", 32, 6, 3.9), ("rev_resnet2d", 32, 6, 1.3), ("rev_resnet2d", 56, 6, 3.9),
     ("resnet2d", 32, 9, 5.7), ("rev_resnet2d", 58, 9, 5.6), ("rev_resnet2d", 64, 9, 6.8)],
)
def test_parameter_counts_match_paper(name: str, width: int, depth: int, millions: float) -> None:
    m = create_model(name, width=width, depth=depth)
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)


def test_rev_resnet2d_shapes_core_and_gradients() -> None:
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    # Random core weights: the core does something (not the identity it starts as).
    m, plain = random_twins("rev_resnet2d", part="core", dtype=torch.float32, width=4, depth=3)
    y = m(x)
    assert y.shape == x.shape and m.reverse(x).shape == x.shape and y.abs().max() <= 1
    h = m.enc_x(x)
    assert torch.allclose(m.core.inverse(m.core(h)), h, atol=1e-5)
    # Memory-saving gradients equal plain autograd (float64, so only the maths can differ).
    m, plain, xd = m.double(), plain.double(), x.double()
    (m(xd).sum() + m.reverse(xd).square().sum()).backward()
    (plain(xd).sum() + plain.reverse(xd).square().sum()).backward()
    for (n, p), q in zip(m.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-10), n
    with pytest.raises(ValueError, match="divisible by 4"):
        m(torch.zeros(1, 3, 18, 18))


def test_segnet_and_patchgan2d_shapes() -> None:
    seg = create_model("segnet2d", width=4, depth=1)
    assert seg(torch.zeros(1, 3, 32, 32)).shape == (1, 19, 32, 32)
    d = create_model("patchgan2d", in_channels=6, width=8)
    assert d(torch.zeros(1, 6, 32, 32)).shape[:2] == (1, 1)


# ----------------------------------------------------------------------------- training + evaluation
def _config(root: Path, out: Path, mode: str, model: str, kwargs: dict, steps: int = 3,
            dataset: str | None = None) -> dict:
    return {
        "output_dir": str(out),
        "data": {"type": "aligned2d", "root": str(root), "image_size": 32, "flip": True, "dataset": dataset},
        "model": {"name": model, "kwargs": {"in_channels": "auto", **kwargs}},
        "discriminator": {"name": "patchgan2d", "kwargs": {"in_channels": "auto", "width": 8}},
        "train": {"mode": mode, "batch_size": 2, "n_epochs": 1, "n_epochs_decay": 1, "max_steps": steps,
                  "checkpoint_every": 100, "log_every": 1, "samples": False, "progress": False, "threads": 1},
    }


@pytest.fixture(scope="module")
def data2d(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("twod")
    return {
        "maps": make_aligned_dataset(base / "maps", "maps", n_train=4, n_val=2, size=40, seed=1),
        "cityscapes": make_aligned_dataset(base / "cityscapes", "cityscapes", n_train=4, n_val=2, size=40, seed=2,
                                           suffix=".jpg"),
    }


@pytest.mark.parametrize(
    "mode,model,losses",
    [("paired", "rev_resnet2d", ["gan_F", "l1_F", "l1_G", "D_Y"]),
     ("unpaired", "rev_resnet2d", ["gan_F", "cycle_x", "cycle_y", "D_X"]),
     ("paired_l1", "resnet2d", ["l1_F", "l1_G"])],
)
def test_modes_train_through_shared_trainer(tmp_path: Path, data2d: dict[str, Path], mode: str, model: str,
                                            losses: list[str]) -> None:
    from medsr.checkpoint import load_generator
    from pipelines.cli import main
    from pipelines.train import train

    run = train(_config(data2d["maps"], tmp_path / "run", mode, model, {"width": 4, "depth": 1}))
    log = pd.read_csv(run / "log.csv")
    assert log["step"].tolist() == [1, 2, 3]
    assert np.isfinite(log[losses].to_numpy()).all()
    gen, sx, sy, ck = load_generator(run / "last.pt")
    assert ck["data"]["dataset"] == "maps" and ck["data"]["image_size"] == 32 and ck["step"] == 3
    x = torch.zeros(1, 3, 32, 32)
    assert gen(x).shape == gen.reverse(x).shape == (1, 3, 32, 32)
    if mode == "paired":  # the library translator, then evaluate2d end to end on this checkpoint
        from medsr.twod.translate import Translator

        tr = Translator(run / "last.pt", torch.device("cpu"))
        with torch.no_grad():
            f = sy.denormalise(gen(sx.normalise(x, channel_axis=1)), channel_axis=1)
            g = sx.denormalise(gen.reverse(sy.normalise(x, channel_axis=1)), channel_axis=1)
        assert not tr.swap and torch.allclose(tr.a_to_b(x), f) and torch.allclose(tr.b_to_a(x), g)
        tr.swap = True  # a BtoA run: A is the model's y side
        assert torch.allclose(tr.a_to_b(x), g) and torch.allclose(tr.b_to_a(x), f)
        csv = tmp_path / "scores.csv"
        assert main(["evaluate2d", "--checkpoint", str(run / "last.pt"), "--data", str(data2d["maps"]),
                     "--output", str(csv)]) == 0
        scores = pd.read_csv(csv)
        assert scores["direction"].tolist() == ["sat2map", "map2sat"]
        assert (scores["n_images"] == 2).all()
        assert ((scores["mae"] > 0) & (scores["mae"] < 255)).all()
        assert ((scores["ssim"] > -1) & (scores["ssim"] < 1)).all() and np.isfinite(scores["psnr"]).all()


def test_segmentation_mode_and_cityscapes_scores(tmp_path: Path, data2d: dict[str, Path]) -> None:
    from pipelines.cli import main
    from pipelines.train import train

    seg = train(_config(data2d["cityscapes"], tmp_path / "seg", "segmentation", "segnet2d", {"width": 4, "depth": 1},
                        dataset="cityscapes"))
    log = pd.read_csv(seg / "log.csv")
    assert np.isfinite(log["ce"]).all() and log["ce"].iloc[0] > 0
    gen = train(_config(data2d["cityscapes"], tmp_path / "gen", "paired_l1", "rev_resnet2d", {"width": 4, "depth": 1},
                        steps=2))
    csv = tmp_path / "city.csv"
    assert main(["evaluate2d", "--checkpoint", str(gen / "last.pt"), "--data", str(data2d["cityscapes"]),
                 "--output", str(csv), "--fcn", str(seg / "last.pt")]) == 0
    scores = pd.read_csv(csv).set_index("direction")
    assert list(scores.index) == ["photo2label", "label2photo", "label2photo_real"]
    vals = scores[["pixel_acc", "class_acc", "class_iou"]].to_numpy()
    assert ((vals >= 0) & (vals <= 1)).all()
    # A checkpoint that is not a segmenter is refused as --fcn, naming the file.
    assert main(["evaluate2d", "--checkpoint", str(gen / "last.pt"), "--data", str(data2d["cityscapes"]),
                 "--output", str(tmp_path / "x.csv"), "--fcn", str(gen / "last.pt")]) == 2


# ----------------------------------------------------------------------------- memory trend
def test_memory_trend_2d() -> None:
    """Saved activations: flat in depth for the RevGAN generator, growing for the CycleGAN ResNet."""
    from benchmarks.memory_2d import measure_memory  # registers the 2D cases

    def saved(case: str, variant: str, depth: int) -> float:
        return measure_memory(dict(case=case, variant=variant, depth=depth, width=4, channels=3, patch=32,
                                   device="cpu"))["saved_MiB"]

    rev = [saved("2d", "reversible", d) for d in (1, 3, 6)]
    res = [saved("2d_cyclegan", "plain", d) for d in (1, 3, 6)]
    plain = [saved("2d", "plain", d) for d in (1, 6)]
    assert max(rev) - min(rev) <= 0.02 * rev[0]
    assert res[0] < res[1] < res[2]
    # Each residual block adds about the same activations (linear growth).
    assert (res[2] - res[1]) / 3 == pytest.approx((res[1] - res[0]) / 2, rel=0.1)
    assert plain[1] > plain[0] * 1.2 and rev[-1] < plain[1]
