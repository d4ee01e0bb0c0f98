"""Meta-step time of the Iris config with 1 and 2 torch threads, interleaved.

python benchmarks/threads.py
"""

import statistics
import time

import torch

from gnca.config import Config
from gnca.trainer import MetaTrainer

tr = MetaTrainer.from_config(Config())
for _ in range(3):
    tr.meta_step()
res: dict[int, list[float]] = {1: [], 2: []}
for _ in range(4):
    for n in (1, 2):
        torch.set_num_threads(n)
        t = time.perf_counter()
        for _ in range(8):
            tr.meta_step()
        res[n].append((time.perf_counter() - t) / 8)
for n, v in res.items():
    print(f"{n} thread(s): median {statistics.median(v):.4f} s/meta-step", [round(x, 3) for x in v])
