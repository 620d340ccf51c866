"""Test-wide settings: tiny models run fastest (and least disturbed by other processes) on one thread."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

from difflung.diffusion.toy import toy_dataset  # noqa: E402


@pytest.fixture(scope="session")
def toy_ds(tmp_path_factory):
    """The tests' toy dataset (`difflung.diffusion.toy`: 5 patients, split 3/1/1, 4 slices each, 16 px), written
    once per session. Datasets are read-only artifacts; a test that needs other data writes its own."""
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n_patients=5, n_slices=4, size=16)
