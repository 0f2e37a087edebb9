"""WGAN-GP losses (Gulrajani et al. 2017) with Karras's drift term, and the generator's `gan` / `joint` loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("joint", "gan")


def gradient_penalty(critic, low: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """weight * mean((|grad_x D(low, x)|_2 - 1)^2) at random points x between real and fake images."""
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    points = (real.detach() + mix * (fake.detach() - real.detach())).requires_grad_(True)
    scores = critic(low, points)
    (gradient,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    norm = gradient.flatten(1).norm(dim=1)
    return weight * ((norm - 1.0) ** 2).mean()


def critic_loss(critic, low: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0,
                drift: float = 1e-3) -> tuple[torch.Tensor, dict]:
    """WGAN-GP critic loss D(fake) - D(real) + gradient penalty + drift * D(real)^2 (keeps scores near 0)."""
    real_scores, fake_scores = critic(low, real), critic(low, fake.detach())
    wasserstein = fake_scores.mean() - real_scores.mean()
    penalty = gradient_penalty(critic, low, real, fake, gp_weight)
    drift_term = drift * (real_scores**2).mean()
    loss = wasserstein + penalty + drift_term
    return loss, {"critic": float(loss.detach()), "wasserstein": float(-wasserstein.detach()),
                  "gradient_penalty": float(penalty.detach()), "drift": float(drift_term.detach())}


def generator_loss(critic, low: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, mode: str = "joint",
                   lambda_gan: float = 1e-3, seen: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """`gan`: -D(low, G(low)); `joint` (SRGAN): MAE(G(low), high) + lambda_gan * (-D(low, G(low))). The critic
    judges `seen` where given (G(low) as the camera would record it), the MAE always G(low) itself."""
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
    adversarial = -critic(low, fake if seen is None else seen).mean()
    if mode == "gan":
        return adversarial, {"generator": float(adversarial.detach()), "adversarial": float(adversarial.detach())}
    mae = F.l1_loss(fake, real)
    loss = mae + lambda_gan * adversarial
    return loss, {"generator": float(loss.detach()), "mae": float(mae.detach()),
                  "adversarial": float(adversarial.detach())}
