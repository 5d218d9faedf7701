import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
# CI and the developers' machines have 2 cores; pin it so timings and thread pools agree.
torch.set_num_threads(min(2, os.cpu_count() or 1))
