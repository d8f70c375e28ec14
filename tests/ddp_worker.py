"""Run under torchrun by the DDP tests: a short DDP training on digits (gloo).

``python ddp_worker.py OUT [full | cut | resume]``: ``full`` trains 3 epochs; ``cut`` is interrupted
(Ctrl-C on every rank) in the middle of epoch 2; ``resume`` continues the cut run from its ``last.pt``.
"""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from snncutoff import data, models
from snncutoff.train import TrainConfig, Trainer, distributed_env, seed_everything


class _Interrupted(Dataset):
    """The training set, raising KeyboardInterrupt at the ``stop_at``-th sample this process reads."""

    def __init__(self, dataset: Dataset, stop_at: int):
        self.dataset, self.stop_at, self.read = dataset, stop_at, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        self.read += 1
        if self.read == self.stop_at:
            raise KeyboardInterrupt
        return self.dataset[i]


out = Path(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "full"
folder = out / ("ckpt" if mode == "full" else "ckpt-cut")
rank, world = distributed_env()
torch.set_num_threads(1)
seed_everything(0)
model = models.get("cnn")
train, test = data.digits().loaders(batch_size=64)
if mode == "cut":  # each rank reads half the training set per epoch: stop in the middle of epoch 2
    train = torch.utils.data.DataLoader(_Interrupted(train.dataset, len(train.dataset) * 3 // 4), batch_size=64)
trainer = Trainer(model, TrainConfig(epochs=3, lr=3e-3), checkpoint_dir=folder, resume=mode == "resume",
                  progress=False).fit(train, test)
torch.save(model.state_dict(), out / f"{mode}-rank{rank}.pt")
if rank == 0:
    (out / f"{mode}-history.json").write_text(json.dumps(trainer.history_))
torch.distributed.barrier()  # nobody tears the group down while another rank still uses it
torch.distributed.destroy_process_group()
