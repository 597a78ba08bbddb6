"""``medsr bench quality``: equal-budget training, whole-volume inference and scores against cubic."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from medsr.data.synthetic import make_prepared_dataset
from benchmarks.quality import parse_spec, spec_name
from pipelines.cli import main


def _config(tmp_path):
    cfg = {
        "data": {"patch_size": 8, "sampling": "random", "random_per_subject": 4},
        "model": {"name": "rev_espcn3d", "kwargs": {"width": 4, "depth": 1, "factor": "auto"}},
        "train": {"mode": "paired_l1", "batch_size": 2, "threads": 1, "progress": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_variants_at_equal_steps_on_a_manifest(tmp_path, monkeypatch):
    manifest = make_prepared_dataset(tmp_path / "prep", 3, (16, 16, 16), "dti", patch_size=8)
    cfg = _config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "quality", "--steps", "2", "--manifest", str(manifest), "--train", "sub00", "sub01",
                 "--test", "sub02", "--output", "bq", "--configs", str(cfg), f"{cfg} model.kwargs.depth=2"]) == 0
    table = pd.read_csv(tmp_path / "bq" / "quality.csv")
    assert list(table["model"]) == ["tiny", "tiny__depth=2"] and set(table["subject"]) == {"sub02"}
    assert (table["steps"] == 2).all()
    for m in ("rmse_interior", "rmse_total", "md_rmse", "fa_rmse"):
        ratio = table[m] / table[f"{m}_cubic"]
        assert ratio.tolist() == pytest.approx(table[f"{m}_ratio"].tolist())
    base = pd.read_csv(tmp_path / "bq" / "baselines.csv")
    assert sorted(base["model"]) == ["cubic", "linear", "nn"]
    assert (tmp_path / "bq" / "predictions" / "tiny" / "sub02.nii.gz").is_file()
    assert "tiny__depth=2" in (tmp_path / "bq" / "quality.txt").read_text()
    # the held-out metrics are in the model card of the checkpoint it trained (medsr info)
    from medsr.checkpoint import load_checkpoint
    from medsr.model_card import model_card

    card = model_card(load_checkpoint(tmp_path / "bq" / "runs" / "tiny" / "last.pt"))
    assert card["heldout_metrics"]["subjects"] == ["sub02"]
    assert card["heldout_metrics"]["mean"]["rmse_interior"] == pytest.approx(float(table["rmse_interior"].iloc[0]))
    assert card["n_subjects"] == 2 and card["intensity"]["y"]["abs_p99"] > 0 and "heldout_metrics" not in card["unknown"]
    # the same command again refuses at once (before any training), naming the way out
    before = (tmp_path / "bq" / "quality.csv").read_bytes()
    assert main(["bench", "quality", "--steps", "2", "--manifest", str(manifest), "--train", "sub00", "sub01",
                 "--test", "sub02", "--output", "bq", "--configs", str(cfg)]) == 2
    assert (tmp_path / "bq" / "quality.csv").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--steps", "2", "--train", "a"], "--train/--test name subjects of --manifest"),
    (["--steps", "0"], "budget must be positive"),
    (["--steps", "2", "--manifest", "m.csv"], "--manifest needs --train and --test"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    cfg = _config(tmp_path)
    assert main(["bench", "quality", "--configs", str(cfg), "--output", str(tmp_path / "o"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_spec_parsing():
    assert parse_spec("configs/a.yaml train.lr=1e-3 'data.subjects=[a, b]'") == (
        __import__("pathlib").Path("configs/a.yaml"), ["train.lr=1e-3", "data.subjects=[a, b]"])
    assert spec_name(*parse_spec("x/demo.yaml model.kwargs.width=32")) == "demo__width=32"
    assert spec_name(*parse_spec("x/demo.yaml train.lr=0.002")) == "demo__lr=0.002"  # the value kept whole
    with pytest.raises(ValueError, match="not a key=value"):
        parse_spec("a.yaml depth")


def test_factor_prepares_the_phantom_in_its_own_cache_folder(tmp_path, monkeypatch, capsys):
    import benchmarks.quality as quality

    calls = []
    monkeypatch.setattr("data_prep.phantom_dataset.prepare_phantoms",
                        lambda folder, n, **kw: calls.append((folder, kw)) or (folder / "m.csv", ["a", "b"]))
    for factor, profile in ((2, "box"), ([1, 1, 4], "box"), ([1, 1, 4], "gaussian"), (3, "box")):
        quality.phantom_data(tmp_path, 1, 1, 0, 1, factor, profile)
    folders = [c[0].name for c in calls]
    assert len(set(folders)) == 4  # one cached dataset per factor and profile
    assert [(c[1]["factor"], c[1]["profile"]) for c in calls][1] == ([1, 1, 4], "box")
    quality.phantom_data(tmp_path, 1, 1, 0, 1)  # factor 2 keeps the folder it had before per-axis factors
    assert calls[-1][0].name == folders[0]
    cfg = _config(tmp_path)
    assert main(["bench", "quality", "--steps", "2", "--manifest", "m.csv", "--train", "a", "--test", "b",
                 "--factor", "1", "1", "4", "--configs", str(cfg), "--output", str(tmp_path / "o")]) == 2
    assert "a --manifest keeps the factor" in capsys.readouterr().err
