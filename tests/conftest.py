"""Shared test settings: hypothesis profiles and the devices every parity test runs on."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" keeps the whole suite within a few minutes on 2 cores; "thorough" is for a long local run.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# "ci-interpreter": the suite's second run, on the Triton kernels under Triton's CPU interpreter, which runs
# them 10-100x slower than compiled; test_triton compares those kernels with the TorchScript ones on fixed
# cases besides (make test-triton).
settings.register_profile(
    "ci-interpreter", max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile("ci-interpreter" if _PROFILE == "ci" and os.environ.get("TRITON_INTERPRET") == "1" else _PROFILE)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The torch.nn reference on CUDA must be exact float32: cuDNN computes in TF32 unless told not to.
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def isolated_torch_state():
    """Restores torch's thread count and random state after the test (for tests of code that sets them)."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


def pytest_generate_tests(metafunc) -> None:
    # A parameter rather than a fixture: hypothesis rejects function-scoped fixtures in @given tests.
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)
