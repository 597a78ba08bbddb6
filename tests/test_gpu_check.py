"""``medsr bench gpu --dry-run``: the prepared GPU check runs end to end on the CPU at tiny sizes, so it cannot rot."""
from __future__ import annotations

import re

import pytest
import torch

from benchmarks.gpu import SECTIONS, TITLES
from pipelines.cli import main


def test_dry_run_writes_every_section(tmp_path, capsys, one_thread):
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--dry-run", "--output", str(out)]) == 0
    text = out.read_text()
    assert "Dry run on the CPU" in text and "all passed" in text and "FAILED" not in text
    assert f"`medsr bench gpu --dry-run --output {out}`" in text  # the command that wrote it
    for name in SECTIONS:
        assert f"## {TITLES[name]}" in text
    # Each training mode ran in fp32 and bf16 and recorded its precision in the checkpoint.
    for mode in ("paired_l1", "paired", "unpaired"):
        for prec in ("fp32", "bf16"):
            assert re.search(rf"^\| {mode} \| {prec} \| 2 \| [^|]+ \| [^|]+ \| {prec} \|", text, re.M), (mode, prec)
    assert "| reversible | bf16 |" in text and "16x18x16x6" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_refuses_in_one_line(tmp_path, capsys):
    assert main(["bench", "gpu", "--output", str(tmp_path / "gpu.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "--dry-run" in err[0]
    assert not (tmp_path / "gpu.md").exists()
    assert main(["bench", "gpu", "--dry-run", "--sections", "train,nope"]) == 2
    assert "unknown 'nope'" in capsys.readouterr().err
