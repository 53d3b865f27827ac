"""When our Triton kernels launch with programmatic dependent launch (runtime/pdl.py): never on the
CPU, on by default only where the GPU and Triton support it, and switchable for A/B runs."""

from __future__ import annotations

import pytest
import torch

from runtime import pdl


@pytest.fixture(autouse=True)
def restore():
    yield
    pdl.force(None)


def test_cpu_tensors_never_launch_with_pdl_even_when_forced():
    cpu = torch.device("cpu")
    assert pdl.enabled(cpu) is False and pdl.launch_args(cpu) == {"PDL": False}
    pdl.force(True)
    assert pdl.enabled(cpu) is False and pdl.launch_args(cpu) == {"PDL": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_force_overrides_the_automatic_choice_on_a_gpu(monkeypatch):
    cuda = torch.device("cuda")
    pdl.force(True)
    assert pdl.launch_args(cuda) == {"PDL": True, "launch_pdl": True}
    pdl.force(False)
    assert pdl.launch_args(cuda) == {"PDL": False}
    monkeypatch.setenv("SGFLOW_DISABLE_PDL", "1")
    pdl.force(None)  # back to automatic: the switch is read again
    assert pdl.enabled(cuda) is False


def test_the_grid_dependency_calls_exist_when_the_launcher_supports_pdl():
    # enabled() may only say yes where the kernels can call gdc_wait / gdc_launch_dependents
    if pdl._triton_launches_pdl():
        assert pdl.gdc_wait is not None and pdl.gdc_launch_dependents is not None
