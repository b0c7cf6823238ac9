"""Shared tiny configs: every test that trains uses one of these, so each compiles once."""

import os
import tempfile

import pytest

# One compilation cache for the test run, shared by the xdist workers and the subprocesses their
# tests start (a fresh one per process without xdist).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ["JAX_COMPILATION_CACHE_DIR"] = (
    os.path.join(tempfile.gettempdir(), f"rqvae-test-xla-{_RUN}") if _RUN
    else tempfile.mkdtemp(prefix="rqvae-test-xla-"))
# The suite is mostly XLA compiling, and most of a CPU compile is LLVM optimizing the emitted
# loops: the tests' programs (and those of the runs they start) are compiled without it. The
# HLO, XLA's passes and donation are the same, and so is every value the tests compare (golden
# steps, bitwise resume); only the machine code is slower, which tiny configs do not feel.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

from rqvae.trainer import config, data

TINY_TOML = """\
steps = 30
batch_size = 16

[loss]
lambda_wasserstein = 0.5

[optimizer]
decay_fraction = 0.0  # a constant rate: a run extended by --resume --steps is the longer run

[model]
encoder_hidden = [32]
latent_dim = 4
num_codes = 8

[run]
log_every = 10
eval_every = 15
checkpoint_every = 15
keep_checkpoints = 5
dead_window = 10
"""


@pytest.fixture(scope="session")
def tiny_cfg() -> config.TrainerConfig:
    cfg = config.from_dict(__import__("tomllib").loads(TINY_TOML))
    return cfg  # the default image shape is the digits' 8 x 8 x 1


@pytest.fixture(scope="session")
def digits() -> data.Dataset:
    return data.load(config.DataConfig())


@pytest.fixture
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path
