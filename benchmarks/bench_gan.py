"""ProGAN training speed per resolution: images/s of full GAN steps (critic + generator), stable and while
fading in, at width 1.0 (Karras's channels) and at a CPU width; and the time the whole 4 -> 256 schedule
would take at these speeds.

    python benchmarks/bench_gan.py                      # CPU: widths 1.0 and 0.125, batch 4
    python benchmarks/bench_gan.py --device cuda --widths 1.0 --batch 16    # bf16 on a GPU
    python benchmarks/bench_gan.py --widths 0.125 --batch 16 --max-resolution 64 --critic-steps 5 --cpu-bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_pgsr.devices import cpu_has_native_bf16, pick_device
from napari_pgsr.models.progan import ProGANCritic, ProGANGenerator, parameter_count, resolutions
from napari_pgsr.training.config import TrainConfig
from napari_pgsr.training.progan_loop import _optimizers, gan_step, phase_schedule


def images_per_second(width: float, resolution: int, alpha: float, batch: int, device, steps: int,
                      max_resolution: int, critic_steps: int = 1, cpu_bf16: bool = False) -> float:
    """Mean images/s over `steps` GAN steps after one warm-up step."""
    config = TrainConfig(model="progan", patch=max_resolution, width=width, batch=batch, critic_steps=critic_steps,
                         cpu_bf16=cpu_bf16)
    generator = ProGANGenerator(1, max_resolution, width, resolution=resolution, alpha=alpha).to(device)
    critic = ProGANCritic(2, max_resolution, width, resolution=resolution, alpha=alpha).to(device)
    if device.type == "cuda" or (cpu_bf16 and cpu_has_native_bf16()):  # as the training loop
        generator, critic = (m.to(memory_format=torch.channels_last) for m in (generator, critic))
    g_opt, d_opt = _optimizers(generator, critic, config)
    low, real = torch.randn(batch, 1, resolution, resolution, device=device), torch.randn(
        batch, 1, resolution, resolution, device=device)
    gan_step(generator, critic, g_opt, d_opt, low, real, config, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        gan_step(generator, critic, g_opt, d_opt, low, real, config, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.125])
    parser.add_argument("--max-resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per resolution (after one warm-up)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="skip larger resolutions of a width once one step there would take longer")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--critic-steps", type=int, default=1, help="critic updates per GAN step (recipe: 5)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on a CPU with hardware bf16 (AMX)")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.critic_steps} critic step(s){', CPU bf16' if args.cpu_bf16 else ''}")
    for width in args.widths:
        critic = ProGANCritic(2, args.max_resolution, width)
        generator = ProGANGenerator(1, args.max_resolution, width)
        print(f"\nwidth {width:g}: critic {parameter_count(critic) / 1e6:.2f} M parameters, generator "
              f"{parameter_count(generator) / 1e6:.2f} M (at {args.max_resolution} px)")
        print("| resolution | images/s stable | images/s fading |")
        print("|---|---|---|")
        speeds = {}
        for resolution in resolutions(args.max_resolution):
            timing = (args.batch, device, args.steps, args.max_resolution, args.critic_steps, args.cpu_bf16)
            stable = images_per_second(width, resolution, 1.0, *timing)
            fading = images_per_second(width, resolution, 0.5, *timing) if resolution > 4 else stable
            speeds[resolution] = (stable, fading)
            print(f"| {resolution} | {stable:.1f} | {fading:.1f} |", flush=True)
            if args.batch / min(stable, fading) > args.seconds:
                print(f"(one step at {resolution} px took over {args.seconds:.0f} s: larger resolutions skipped)")
                break
        if len(speeds) == len(resolutions(args.max_resolution)):
            config = TrainConfig(model="progan", patch=args.max_resolution, width=width)
            seconds = sum(images / speeds[r][1 if fading else 0] for r, fading, images in phase_schedule(config))
            print(f"full schedule 4 -> {args.max_resolution} px at 600k images per phase: "
                  f"{seconds / 3600:.1f} h ({seconds / 86400:.1f} days)")


if __name__ == "__main__":
    main()
