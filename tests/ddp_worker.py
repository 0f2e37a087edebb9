"""Run by tests/test_ddp.py under torchrun: train, then save this rank's weights for comparison."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from napari_pgsr.io import read_movie
from napari_pgsr.pairs import split_alternating
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.loop import train

if __name__ == "__main__":
    movie, folder, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else "unet"
    config = (TrainConfig(steps=4, batch=batch, depth=1, width=4, patch=32, validation_every=2,
                          validation_patches=4, device="cpu", lr=1e-3) if model == "unet" else
              TrainConfig(model="progan", steps=4, batch=batch, width=0.03, patch=16, phase_images=8,
                          validation_every=2, validation_patches=4, device="cpu"))
    draws, uniform = [], torch.rand  # the gradient penalty's interpolation weights

    def recorded(*args, **kwargs):
        draws.append(uniform(*args, **kwargs))
        return draws[-1]

    torch.rand = recorded
    result = train(config, [split_alternating(read_movie(movie))], folder / "ddp.pgsr")
    rank = dist.get_rank()
    torch.save(result.network.state_dict(), folder / f"rank{rank}.pt")
    torch.save(torch.cat([d.flatten() for d in draws]) if draws else torch.zeros(0), folder / f"draws{rank}.pt")
    dist.destroy_process_group()
