"""Test-wide settings.

Tiny tensors run fastest on one thread; with several threads on a shared 2-core machine
the thread pool's hand-offs dominate (seen 100x slower)."""

import torch

torch.set_num_threads(1)
