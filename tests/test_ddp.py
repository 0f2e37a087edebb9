"""DistributedDataParallel on CPU: 2 gloo processes launched by torchrun, as on a multi-GPU server."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_pgsr.io import read_movie, write_movie
from napari_pgsr.modelfile import load_model
from napari_pgsr.pairs import split_alternating
from napari_pgsr.simulate import simulate_movie
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.loop import train

HERE = Path(__file__).parent


def _torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "movie.tif"
    write_movie(path, simulate_movie("ap2", 48, (64, 64), seed=0).movie, pixel_size_um=0.16)
    return path


def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path, movie):
    run = _torchrun(str(HERE / "ddp_worker.py"), str(movie), str(tmp_path), "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)  # ranks stay identical
    saved = load_model(tmp_path / "ddp.pgsr")  # written by rank 0 alone
    assert saved.metadata["world_size"] == 2
    config = TrainConfig(steps=4, batch=4, depth=1, width=4, patch=32, validation_every=2, validation_patches=4,
                         device="cpu", lr=1e-3)
    single = train(config, [split_alternating(read_movie(movie))], tmp_path / "single.pgsr").network.state_dict()
    for key in rank0:  # same patches, gradients averaged over 2 x 2 instead of 1 x 4
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)


def test_console_command_under_torchrun(tmp_path, movie):
    run = _torchrun("-m", "napari_pgsr.cli", "train", str(movie), "--out", str(tmp_path / "m.pgsr"), "--steps",
                    "2", "--depth", "1", "--width", "4", "--patch", "32", "--batch", "2", "--device", "cpu",
                    "--validation-every", "2", "--validation-patches", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load_model(tmp_path / "m.pgsr").metadata["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pgsr"]  # one writer, no temporary files left


def test_two_processes_train_one_progan(tmp_path, movie):
    run = _torchrun(str(HERE / "ddp_worker.py"), str(movie), str(tmp_path), "2", "progan", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:  # gradients averaged across ranks: the generators (EMA) stay identical
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    saved = load_model(tmp_path / "ddp.pgsr")
    assert saved.metadata["world_size"] == 2 and saved.training_state["images_seen"] == 4 * 2 * 2
    draws0, draws1 = (torch.load(tmp_path / f"draws{rank}.pt", weights_only=True) for rank in (0, 1))
    assert draws0.numel() == draws1.numel() > 0 and not torch.equal(draws0, draws1)  # each rank its own points

