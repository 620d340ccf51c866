"""Test-wide settings: tiny models run fastest (and least disturbed by other processes) on one thread."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
