"""The analytic tests compare against closed forms in double precision."""

import pytest
import torch


@pytest.fixture(autouse=True)
def double_precision():
    """float64 as torch's default dtype inside each sampling test, restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
