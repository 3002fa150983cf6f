"""Helpers shared by the test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""
import numpy as np
import torch


def assert_close(actual, expected, rtol, atol=0.0):
    """Elementwise |actual - expected| <= atol + rtol |expected|, shapes equal (numpy's check;
    torch.testing's first call costs seconds of imports)."""
    actual, expected = (torch.as_tensor(a).detach().double().numpy() for a in (actual, expected))
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
