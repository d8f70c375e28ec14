"""Run under torchrun by test_ddp_two_cpu_processes: a short DDP training on digits (gloo)."""

import json
import sys
from pathlib import Path

import torch

from snncutoff import data, models
from snncutoff.train import TrainConfig, Trainer, distributed_env, seed_everything

out = Path(sys.argv[1])
rank, world = distributed_env()
torch.set_num_threads(1)
seed_everything(0)
model = models.get("cnn")
train, test = data.digits().loaders(batch_size=64)
trainer = Trainer(model, TrainConfig(epochs=3, lr=3e-3), checkpoint_dir=out / "ckpt", progress=False).fit(train, test)
torch.save(model.state_dict(), out / f"rank{rank}.pt")
if rank == 0:
    (out / "history.json").write_text(json.dumps(trainer.history_))
torch.distributed.barrier()  # nobody tears the group down while another rank still uses it
torch.distributed.destroy_process_group()
