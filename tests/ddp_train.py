"""Train a small MLP with trustlab.train.fit; run plainly or under torchrun (DDP equivalence test)."""

import sys

import torch
import torch.nn as nn

from trustlab.data.readers import make_synthetic
from trustlab.train import finish_distributed, fit, world
from trustlab.train_config import TrainConfig

torch.set_num_threads(1)
splits, _ = make_synthetic(n_train=256, n_test=64, seed=3)
x = torch.from_numpy(splits["train"]["images"]).float() / 255
y = torch.from_numpy(splits["train"]["labels"])
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 4))
cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, augment=True, device="cpu", checkpoint_every=0)
fit(model, x, y, cfg, None, quiet=True)
if world()[0] == 0:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[1])
finish_distributed()
