"""Cost accounting: the GPU peak table behind the MFU estimate, the FLOP estimate, and a CPU run's cost."""
from __future__ import annotations

import time

import pytest
import torch

from molmini.train.cost import CostMeter, peak_flops, peak_flops_by_name, run_cost, training_flops


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                       ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
                                       ("Tesla T4", None)])
def test_peak_flops_by_gpu_name(name, peak):
    assert peak_flops_by_name(name) == peak


def test_no_peak_and_no_energy_on_a_cpu():
    assert peak_flops(torch.device("cpu")) is None
    assert CostMeter().energy_start is None


def test_training_flops_are_six_per_parameter_per_token():
    assert training_flops(num_params=1_000_000, tokens=2_000) == 1.2e10


def test_run_cost_on_a_cpu_adds_the_time_before_a_resume():
    from molmini.train.accelerator import make_accelerator
    from tests.helpers import tiny_config
    meter = CostMeter(previous={"wall_time_s": 100.0, "energy_kwh": None})
    time.sleep(0.05)
    cost = run_cost(make_accelerator(tiny_config("train.trackers=[]")), meter)
    assert 100.0 < cost["wall_time_s"] < 110 and cost["gpu_hours"] == 0
    assert cost["energy_kwh"] is None and cost["gpu"] is None
