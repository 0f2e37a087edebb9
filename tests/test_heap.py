"""Freed memory kept for reuse during CPU jobs (glibc), and handed back when the last job ends."""

import inspect
import resource
import subprocess
import sys
import threading

import pytest
import torch

from napari_pgsr import heap
from napari_pgsr.data import Normalization
from napari_pgsr.inference import RestoredFrames, Restorer, restore
from napari_pgsr.modelfile import ModelFile
from napari_pgsr.models.unet import UNet
from napari_pgsr.streaming import stream_restore

pytestmark = pytest.mark.skipif(heap._glibc is None, reason="glibc's mallopt only (and no user malloc settings)")

BLOCK = 96 * 2**20  # above glibc's largest mmap threshold (32 MiB): mmapped afresh on every allocation


def faults_per_forward(network, x, repeats: int = 3, warmup: int = 2) -> float:
    """Minor page faults of one forward pass, once the allocations have settled (a ratio between two of
    these does not depend on the page size the kernel faults in): the fewest of `repeats` passes, so a
    one-off fault (a busy machine's page reclaim) is not taken for memory handed back."""
    counts = []
    with torch.inference_mode():
        for _ in range(warmup):
            network(x)
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            network(x)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


MAIN_THREAD_JOB = """
import resource, torch
from napari_pgsr import heap
from napari_pgsr.models.unet import UNet
torch.manual_seed(0)
network, x = UNet(depth=2, width=32).eval(), torch.rand(1, 1, 320, 320)
outside = faults_per_forward(network, x)
with heap.reusing_freed_memory():
    inside = faults_per_forward(network, x)
print(inside, outside, faults_per_forward(network, x))
"""


def _run_fresh(job: str) -> list[float]:
    """Run `job` (with faults_per_forward) in a fresh process and return the numbers it prints: the page
    faults count every thread of a process, and earlier tests leave threads and arenas behind."""
    result = subprocess.run([sys.executable, "-c", inspect.getsource(faults_per_forward) + job],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [float(value) for value in result.stdout.split()]


def test_forward_passes_reuse_their_memory_inside_and_refault_it_outside():
    inside, outside, after = _run_fresh(MAIN_THREAD_JOB)
    assert inside < 0.2 * outside and inside < 0.2 * after, (inside, outside, after)


THREAD_JOB = """
import resource, threading, torch
from napari_pgsr import heap
from napari_pgsr.models.unet import UNet
torch.manual_seed(0)
network, x, faults = UNet(depth=2, width=32).eval(), torch.rand(1, 1, 320, 320), []
heap.share_one_arena()

def job():  # like a napari worker or the TIFF writer's restoring thread
    with heap.reusing_freed_memory():
        faults.append(faults_per_forward(network, x, warmup=4))

outside = faults_per_forward(network, x)
thread = threading.Thread(target=job)
thread.start()
thread.join()
print(faults[0], outside)
"""


def test_threads_started_after_sharing_the_arena_reuse_memory_too():
    # A fresh process: in this one, earlier tests' ended threads left arenas that a new thread may take
    # over (the module's best-effort note), which made the figure depend on the test order.
    inside, outside = _run_fresh(THREAD_JOB)
    assert inside < 0.2 * outside, (inside, outside)  # its memory stayed mapped


def test_nested_and_threaded_jobs_keep_it_until_the_last_ends():
    assert not heap.active()
    entered, release, outer_saw = threading.Event(), threading.Event(), []

    def other_job():
        with heap.reusing_freed_memory():
            entered.set()
            release.wait(5)

    with heap.reusing_freed_memory():
        thread = threading.Thread(target=other_job)
        thread.start()
        assert entered.wait(5)
        with heap.reusing_freed_memory():
            assert heap.active()
        outer_saw.append(heap.active())
    assert heap.active()  # the other thread's job still runs
    release.set()
    thread.join()
    assert outer_saw == [True] and not heap.active()
    with heap.reusing_freed_memory(enabled=False):  # a GPU job changes nothing
        assert not heap.active()


def test_kept_memory_is_returned_when_the_job_ends():
    with heap.reusing_freed_memory():
        blocks = [torch.ones(BLOCK // 4) for _ in range(3)]
        held = rss_mib()
        del blocks
        kept = rss_mib()
        assert kept > held - 100, (held, kept)  # freed but kept for the next pass
    assert rss_mib() < kept - 200, (kept, rss_mib())


def test_restorations_run_inside_the_block():
    torch.manual_seed(0)
    model = ModelFile(UNet(depth=1, width=4).eval(), Normalization(100.0, 300.0, 100.0, 2100.0),
                      {"config": {"context": 0}})
    restorer, seen = Restorer(model, device="cpu"), []
    forward = restorer._network_output  # every path, whole frames and tiles, runs the network through it
    restorer._network_output = lambda x: (seen.append(heap.active()), forward(x))[1]
    movie = torch.randint(100, 400, (3, 24, 24), dtype=torch.int32).numpy().astype("uint16")
    RestoredFrames(restorer, movie, [0, 1, 2]).frame(1)  # a lazy layer's frame
    stream_restore(restorer, movie, lambda position, frame: None)  # what files are written from
    assert seen == [True] * 4 and not heap.active()
    restore(model, movie)  # the in-memory path
    assert not heap.active()


def test_off_glibc_the_allocator_is_left_alone(monkeypatch):
    def musl_confstr(name):
        raise OSError(22, "Invalid argument")  # musl's answer for a GNU-only name
    monkeypatch.setattr(heap.os, "confstr", musl_confstr)
    assert heap._load_glibc() is None
