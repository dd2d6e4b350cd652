"""One device choice for every ``*.device`` param (classify, train, evaluate, heatmap); errors name the param."""

from __future__ import annotations

import pytest

from pipeline.device import import_torch, resolve_device
from pipeline.errors import ConfigError


def test_auto_and_cpu_resolve_and_a_bad_value_names_its_param():
    torch = import_torch()
    assert resolve_device("cpu", "train.device") == "cpu"
    assert resolve_device("auto", "classify.device") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"^evaluate\.device must be auto, cpu, cuda or cuda:N, got 'tpu'$"):
        resolve_device("tpu", "evaluate.device")


def test_a_cuda_device_without_a_gpu_names_its_param():
    if import_torch().cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    message = r"^classify\.device is 'cuda:0' but no CUDA GPU is visible; use auto or cpu$"
    with pytest.raises(ConfigError, match=message):
        resolve_device("cuda:0", "classify.device")
