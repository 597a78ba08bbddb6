"""One device rule for training, inference and 2D evaluation (medsr/utils/device.py)."""
from __future__ import annotations

import pytest
import torch

from medsr.training.distributed import DistInfo, select_device
from medsr.utils.device import check_device, resolve_device

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("request_", [None, "", "auto"])
def test_auto_is_the_gpu_when_there_is_one_else_the_cpu(request_):
    assert check_device(request_) == "auto"
    assert resolve_device(request_) == torch.device("cuda:0" if HAS_CUDA else "cpu")


def test_explicit_devices_and_torch_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    dev = torch.device("cpu")
    assert resolve_device(dev) is dev


@pytest.mark.parametrize("request_, pattern", [
    ("gpu", r"^--device 'gpu': not a device name; use auto, cpu, cuda or cuda:N$"),
    ("cuda:99", r"^--device 'cuda:99': (CUDA is not available|no such GPU)"),
    ("meta", r"^--device 'meta': unsupported device type 'meta'"),
])
def test_bad_devices_are_one_line_errors_naming_the_flag(request_, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_device(request_)
    with pytest.raises(ValueError, match=pattern.replace("--device", "config key 'train.device':")):
        resolve_device(request_, "config key 'train.device':")


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only message")
def test_cuda_on_a_cpu_machine_says_so():
    with pytest.raises(ValueError, match="'cuda': CUDA is not available on this machine; use cpu or auto"):
        resolve_device("cuda")


def test_training_uses_the_same_rule_with_its_rank():
    info = DistInfo(rank=1, local_rank=1, world_size=2)
    assert select_device("cpu", info) == torch.device("cpu")
    if not HAS_CUDA:
        assert select_device("auto", info) == torch.device("cpu")
        with pytest.raises(ValueError, match="^config key 'train.device': 'cuda'"):
            select_device("cuda", info)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_bare_cuda_is_this_ranks_gpu():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda:0")
    assert resolve_device("auto", local_rank=0) == torch.device("cuda:0")
