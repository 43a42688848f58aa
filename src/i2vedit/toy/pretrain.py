"""Train the toy model on the procedural world (Lightning), in two stages:

1. the VAE (``AutoencoderKL``) on single frames: L1 + L2 reconstruction of the posterior's
   mode and a small KL term;
   then its ``scaling_factor`` is set to 1 / std of the latents, as Stable Diffusion's was;
2. the UNet with the VAE and image encoder frozen, with SVD's image-to-video objective: EDM
   preconditioning (``i2vedit.core.edm.denoise``), sigma from the cosine-interpolated
   distribution and the EDM loss weight (``i2vedit.training.loss``), conditioning on the first
   frame's CLIP embedding and noise-augmented VAE latents and on the added time ids (fps,
   motion bucket, noise augmentation) exactly as inversion and sampling condition; the
   condition is dropped (zeroed) for 10% of the clips so classifier-free guidance works.

Every clip comes from ``i2vedit.toy.world.training_clip(seed)`` with seeds below the held-out
range. The weights are written (fp16, atomically) every ``--save-every`` steps and at the end,
so an interrupted run still leaves usable weights; ``--resume`` continues from them.

    python -m i2vedit.toy.pretrain --vae-steps 2000 --unet-steps 4000 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import math
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from i2vedit.core.edm import Condition, ConditioningParams, denoise, encode_condition
from i2vedit.models.device import resolve_device
from i2vedit.models.toy import (
    TOY_FRAMES,
    TOY_WEIGHTS,
    build_toy_pipeline,
    describe_weights,
    load_toy_pipeline,
    save_toy_weights,
)
from i2vedit.progress import setup_logging
from i2vedit.toy.world import training_clip
from i2vedit.training.loss import cosine_interpolated_sigma, edm_loss

log = logging.getLogger(__name__)

COND_DROP = 0.1  #: share of clips trained without their condition (for guidance)
KL_WEIGHT = 1e-6


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (F, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class WorldClips(IterableDataset):
    """Endless world clips, clip ``i`` from seed ``offset + i`` (deterministic)."""

    def __init__(self, offset: int, frames: int = TOY_FRAMES) -> None:
        self.offset, self.frames = offset, frames

    def __iter__(self):
        i = 0
        while True:
            yield to_model_range(training_clip(self.offset + i, self.frames))
            i += 1


class WorldFrames(IterableDataset):
    """Endless single frames, frame ``i`` from clip seed ``offset + i`` (one frame a clip: the
    frames of a batch are unrelated, which trains the VAE faster than whole clips)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __iter__(self):
        i = 0
        while True:
            clip = training_clip(self.offset + i)
            yield to_model_range(clip[i % len(clip)][None])[0]
            i += 1


class VAEModule(L.LightningModule):
    """The VAE's reconstruction objective; with ``decoder_only`` the encoder (and so the latent
    space a trained UNet works in) stays fixed and only the decoder learns, as Stable
    Diffusion's later decoders were fine-tuned."""

    def __init__(self, vae: torch.nn.Module, lr: float, decoder_only: bool = False) -> None:
        super().__init__()
        self.vae, self.lr, self.decoder_only = vae, lr, decoder_only
        if decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)

    def training_step(self, frames: torch.Tensor, batch_idx: int) -> torch.Tensor:
        posterior = self.vae.encode(frames).latent_dist
        # the mode, as every later use of the VAE encodes (SVD's pipeline, our stages): a
        # deterministic autoencoder learns flat colours in a few hundred steps, where decoding
        # unit-variance samples of the untrained posterior kept the loss high for long
        recon = self.vae.decode(posterior.mode()).sample
        l1 = (recon - frames).abs().mean()
        l2 = ((recon - frames) ** 2).mean()
        kl = posterior.kl().mean() / frames[0].numel()
        loss = l1 + l2 + KL_WEIGHT * kl
        self.log_dict({"vae_loss": loss, "vae_l1": l1}, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)


class UNetModule(L.LightningModule):
    """SVD's image-to-video objective on world clips, the UNet trainable, the rest frozen."""

    def __init__(self, pipe, lr: float, seed: int, steps: int, done: int = 0) -> None:
        super().__init__()
        self.pipe, self.unet, self.lr, self.seed = pipe, pipe.unet, lr, seed
        self.steps, self.done = steps, done  # this run's steps; steps of earlier runs
        self.params = ConditioningParams()

    def on_fit_start(self) -> None:
        self.pipe.to(self.device)  # the frozen VAE and image encoder too

    def training_step(self, clip: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # a resumed run goes on with new draws rather than replaying the first run's
        g = torch.Generator().manual_seed(self.seed * 7919 + self.done + self.global_step)
        frames = clip[0]
        pipe = self.pipe
        with torch.no_grad():
            vae = pipe.vae
            latents = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor
            latents = latents.unsqueeze(0)
            cond = encode_condition(pipe, frames[:1], self.params, len(frames), g, guided=False)
        if torch.rand((), generator=g).item() < COND_DROP:
            cond = Condition(
                torch.zeros_like(cond.embeddings),
                torch.zeros_like(cond.image_latents),
                cond.time_ids,
                False,
            )
        sigma = cosine_interpolated_sigma(torch.rand((), generator=g)).item()
        noise = torch.randn(latents.shape, generator=g)
        denoised = denoise(self.unet, latents + sigma * noise, sigma, cond)
        loss = edm_loss(denoised, latents, sigma)
        self.log_dict({"loss": loss, "sigma": sigma}, prog_bar=True, on_step=True, batch_size=1)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=1e-2)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: unet_lr_factor(s, self.steps, resumed=self.done > 0)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def unet_lr_factor(step: int, steps: int, resumed: bool, warmup: int = 200) -> float:
    """The UNet's learning-rate factor: a linear warm-up (not on a resumed run, whose Adam
    statistics restart but whose weights are trained), then a cosine decay to 10% at ``steps``."""
    ramp = 1.0 if resumed else min(1.0, (step + 1) / warmup)
    progress = min(1.0, step / max(1, steps))
    return ramp * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


class SaveWeights(L.Callback):
    """Writes the whole toy pipeline's weights every ``every`` steps and at the end, and keeps
    a CSV of (stage, step, loss, seconds)."""

    def __init__(
        self, pipe, out: Path, every: int, log_path: Path, stage: str, meta: dict, done: int = 0
    ):
        self.pipe, self.out, self.every, self.stage, self.meta = pipe, out, every, stage, meta
        self.log_path, self.start, self.done = log_path, time.perf_counter(), done
        self.seconds_before = float(meta.get(f"{stage}_seconds", 0.0)) if done else 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        new = not self.log_path.is_file()
        with open(self.log_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["stage", "step", "loss", "seconds"])
            writer.writerow(
                [
                    self.stage,
                    self.done + step,
                    f"{loss:.5f}",
                    f"{self.seconds_before + time.perf_counter() - self.start:.1f}",
                ]
            )
        if step % self.every == 0:
            self.save(step)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer.global_step)

    def save(self, step: int) -> None:
        seconds = self.seconds_before + time.perf_counter() - self.start
        self.meta[f"{self.stage}_steps"] = self.done + step
        self.meta[f"{self.stage}_seconds"] = round(seconds, 1)
        save_toy_weights(self.pipe, self.out, self.meta)
        log.info("%s step %d: weights written to %s", self.stage, self.done + step, self.out)


def set_scaling_factor(pipe, clips: int = 64, offset: int = 900_000) -> float:
    """``scaling_factor = 1 / std`` of the VAE latents (modes) of ``clips`` world clips."""
    with torch.no_grad():
        values = [
            pipe.vae.encode(to_model_range(training_clip(offset + i))).latent_dist.mode()
            for i in range(clips)
        ]
    factor = float(1.0 / torch.cat(values).std())
    pipe.vae.register_to_config(scaling_factor=factor)
    return factor


def plot_loss(csv_path: Path, png_path: Path, window: int = 50) -> Path:
    """The loss curves of both stages (moving average over ``window`` steps, log scale) as a
    PNG, drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    stages = {}
    for row in rows:
        stages.setdefault(row["stage"], []).append(float(row["loss"]))
    width, height, pad = 720, 300, 40
    image = Image.new("RGB", (width, height * len(stages)), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, (stage, losses) in enumerate(stages.items()):
        values = (
            np.convolve(losses, np.ones(window) / window, mode="valid")
            if len(losses) > window
            else np.asarray(losses)
        )
        logs = np.log10(np.maximum(values, 1e-6))
        lo, hi = float(logs.min()), float(logs.max()) or 1.0
        top = i * height
        box = (pad, top + pad, width - pad, top + height - pad)
        draw.rectangle(box, outline="black")
        points = [
            (
                box[0] + (box[2] - box[0]) * j / max(1, len(logs) - 1),
                box[3] - (box[3] - box[1]) * (v - lo) / max(hi - lo, 1e-9),
            )
            for j, v in enumerate(logs)
        ]
        draw.line(points, fill=(200, 30, 30), width=2)
        draw.text((pad, top + 8), f"{stage} loss ({window}-step mean), log scale", "black", font)
        draw.text((box[0] + 2, box[1] + 2), f"{10**hi:.3g}", "black", font)
        draw.text((box[0] + 2, box[3] - 12), f"{10**lo:.3g}", "black", font)
        draw.text((box[2] - 60, box[3] + 4), f"step {len(losses)}", "black", font)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(png_path)
    return png_path


def _trainer(steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        precision="32",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        callbacks=callbacks,
        log_every_n_steps=50,
    )


def decoder_stage(args: argparse.Namespace, meta: dict) -> int:
    """``--stage decoder``: fine-tune the decoder of ``--init`` on world frames, the encoder
    fixed, and write the pipeline to ``--out``; ``--stage take-decoder``: put the decoder (and
    post-quant conv) of ``--init`` into the pipeline at ``--out``."""
    source = load_toy_pipeline(args.init)
    if args.stage == "take-decoder":
        pipe = load_toy_pipeline(args.out)
        for part in ("decoder", "post_quant_conv"):
            getattr(pipe.vae, part).load_state_dict(getattr(source.vae, part).state_dict())
        meta = {**describe_weights(args.out), "decoder_from": describe_weights(args.init)}
        save_toy_weights(pipe, args.out, meta)
        log.info("decoder of %s written into %s", args.init, args.out)
        return 0
    module = VAEModule(source.vae, args.vae_lr, decoder_only=True)
    data = DataLoader(WorldFrames(200_000), batch_size=args.vae_batch, num_workers=0)
    saver = SaveWeights(source, args.out, args.save_every, args.log, "decoder", meta)
    _trainer(args.decoder_steps, [saver]).fit(module, data)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2vedit.toy.pretrain", description=__doc__)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=4, help="frames per step")
    parser.add_argument("--vae-lr", type=float, default=1e-4)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=2e-4, help="UNet learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=TOY_WEIGHTS)
    parser.add_argument("--log", type=Path, default=Path("docs/toy_train.csv"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on training the UNet of the weights at --out for --unet-steps more steps",
    )
    parser.add_argument(
        "--stage",
        choices=("all", "decoder", "take-decoder"),
        default="all",
        help="all: VAE then UNet; decoder: fine-tune the VAE decoder of --init (encoder fixed) "
        "into --out; take-decoder: copy the decoder of --init into the weights at --out",
    )
    parser.add_argument("--init", type=Path, help="weights the decoder stages start from")
    parser.add_argument("--decoder-steps", type=int, default=2000)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {
        "command": "python -m i2vedit.toy.pretrain " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(resolve_device("auto")),
        "torch_threads": torch.get_num_threads(),
        "seed": args.seed,
    }
    L.seed_everything(args.seed, workers=True, verbose=False)
    if args.stage != "all":
        return decoder_stage(args, meta)
    done = 0
    if args.resume:
        pipe = load_toy_pipeline(args.out)
        earlier = describe_weights(args.out)
        done = int(earlier.get("unet_steps", 0))
        # the earlier runs' record is kept; this run's command is added to it
        meta = {**earlier, "resumed": [*earlier.get("resumed", []), meta]}
        log.info("resuming the UNet stage of %s after step %d", args.out, done)
    else:
        pipe = build_toy_pipeline(args.seed)
        args.log.unlink(missing_ok=True)
        vae_stage = VAEModule(pipe.vae, args.vae_lr)
        data = DataLoader(WorldFrames(0), batch_size=args.vae_batch, num_workers=0)
        saver = SaveWeights(pipe, args.out, args.save_every, args.log, "vae", meta)
        _trainer(args.vae_steps, [saver]).fit(vae_stage, data)
        meta["scaling_factor"] = set_scaling_factor(pipe)
        log.info("VAE scaling factor %.4f", meta["scaling_factor"])
    pipe.vae.requires_grad_(False).eval()
    pipe.image_encoder.requires_grad_(False).eval()
    unet_stage = UNetModule(pipe, args.lr, args.seed, args.unet_steps, done)
    data = DataLoader(WorldClips(100_000 + done), batch_size=1, num_workers=0)
    saver = SaveWeights(pipe, args.out, args.save_every, args.log, "unet", meta, done)
    _trainer(args.unet_steps, [saver]).fit(unet_stage, data)
    log.info("loss curves: %s", plot_loss(args.log, args.log.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
