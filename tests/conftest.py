import os

import pytest
import torch

# Never touch the network from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (restored after): for bitwise comparisons of runs
    whose kernels are not reproducible across thread timings (Mask R-CNN training, see
    test_detect.test_resume_equals_uninterrupted)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """best.pth of `mambaout train` on the embedded digits (3 epochs, ~97%), trained once per
    test run and shared by the tests that need a real trained classifier (demo, low precision)."""
    from dataclasses import replace
    from mambaout.recipe import digits_recipe
    from mambaout.tasks.classification.train import RunOptions, train
    out = tmp_path_factory.mktemp("digits") / "run"
    train(replace(digits_recipe(), epochs=3), RunOptions(output=str(out), workers=0, progress=False))
    return out / "best.pth"


def pytest_collection_modifyitems(items):
    """Tests that start training processes or train for long are marked `slow`:
    `pytest -m "not slow"` is the quick inner loop; `make test` runs everything."""
    for item in items:
        if any(w in item.name for w in SLOW_WORDS) or item.nodeid.split("::")[0].endswith(SLOW_FILES):
            item.add_marker(pytest.mark.slow)


SLOW_WORDS = ("torchrun", "sigterm", "sigkill", "printed", "end_to_end", "full_disk", "worker", "memory_is_bounded")
SLOW_FILES = ("test_demo.py", "test_lowp.py")
