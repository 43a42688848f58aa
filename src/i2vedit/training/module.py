"""Lightning pieces of motion-LoRA training: the module, a one-clip datamodule, the
checkpoint callback that writes LoRA-only safetensors and a resumable trainer state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from peft import LoraConfig
from torch.utils.data import DataLoader, Dataset

from i2vedit.attention.control import AttentionController, controlled_attention
from i2vedit.attention.store import MemoryStore
from i2vedit.core.edm import Condition, denoise
from i2vedit.core.lora import add_motion_lora, lora_disabled, save_lora
from i2vedit.files import atomic_path
from i2vedit.models.device import HOST, PRECISION_DTYPES
from i2vedit.progress import report_step
from i2vedit.training.checkpointing import checkpointed
from i2vedit.training.loss import cosine_interpolated_sigma, edm_loss

log = logging.getLogger(__name__)

RESUME_NAME = "resume.ckpt"

#: (micro-step, clean latents) -> (sigma, noise): what each training step draws.
NoiseDraw = Callable[[int, torch.Tensor], tuple[float, torch.Tensor]]


class CosineSigmaDraw:
    """Sigma from the cosine-interpolated distribution and Gaussian noise, seeded per micro-step
    (so a resumed run draws exactly what an uninterrupted one would)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, step: int, latents: torch.Tensor) -> tuple[float, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        sigma = cosine_interpolated_sigma(torch.rand((), generator=g)).item()
        noise = torch.randn(latents.shape, generator=g).to(latents)
        return sigma, noise


@dataclass
class AnchorClip:
    """Clip 0 of the video, for skip-interval attention while a later clip's LoRA trains:
    its clean latents and its (unguided) conditioning."""

    latents: torch.Tensor
    cond: Condition

    def to(self, device: torch.device) -> AnchorClip:
        c = self.cond
        return AnchorClip(
            self.latents.to(device),
            Condition(
                c.embeddings.to(device),
                c.image_latents.to(device),
                c.time_ids.to(device),
                c.guided,
            ),
        )


class _RepeatedClip(Dataset):
    def __init__(self, sample: dict[str, torch.Tensor], length: int) -> None:
        self.sample, self.length = sample, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample


class OneClipDataModule(L.LightningDataModule):
    """One clip, already encoded: its latents and its conditioning, served every step."""

    def __init__(self, latents: torch.Tensor, cond: Condition, batches: int) -> None:
        super().__init__()
        self.sample = {
            "latents": latents.detach(),
            "embeddings": cond.embeddings.detach(),
            "image_latents": cond.image_latents.detach(),
            "time_ids": cond.time_ids.detach(),
        }
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_RepeatedClip(self.sample, self.batches), batch_size=None, num_workers=0)


def frozen_weights_dtype(precision: str, device: torch.device, current: torch.dtype) -> torch.dtype:
    """The dtype the frozen UNet weights train in under the Lightning ``precision``: its compute
    dtype (bf16, fp16) for a mixed precision on an accelerator; else ``current`` (the CPU keeps
    the weights as loaded)."""
    if device.type == HOST.type or not precision.endswith("-mixed"):
        return current
    return PRECISION_DTYPES.get(precision, current)


@contextlib.contextmanager
def frozen_weights_in(
    unet: torch.nn.Module, dtype: torch.dtype, trainable: list[torch.nn.Parameter]
) -> Iterator[None]:
    """The parameters of ``unet`` other than ``trainable`` in ``dtype`` while inside; exactly as
    before afterwards (the originals of those cast wait on the host meanwhile)."""
    keep = {id(p) for p in trainable}
    cast = [p for p in unet.parameters() if id(p) not in keep and p.dtype != dtype]
    originals = [p.data.cpu() for p in cast]
    for param in cast:
        param.data = param.data.to(dtype)
    try:
        yield
    finally:
        for param, original in zip(cast, originals, strict=True):
            param.data = original.to(param.device)


class MotionLoRAModule(L.LightningModule):
    """Trains a LoRA on the temporal transformer blocks of the UNet with the EDM loss."""

    def __init__(
        self,
        unet: torch.nn.Module,
        lora_config: LoraConfig,
        lr: float,
        weight_decay: float,
        seed: int,
        checkpointing: str = "blocks",
        draw: NoiseDraw | None = None,
        anchor: AnchorClip | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.lora_config = lora_config
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.draw = draw or CosineSigmaDraw(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the LoRA's initial weights depend on the seed alone
            self.lora_params = add_motion_lora(unet, lora_config)
        for param in self.lora_params:
            param.data = param.data.float()  # fp32 master weights under mixed precision
        #: ``lora.checkpointing``: what backward recomputes (installed for the fit only)
        self.checkpointing = checkpointing
        self.strict_loading = False  # checkpoints hold the LoRA only
        #: skip-interval attention: clip 0, and the controller that hands its keys and values
        #: to the temporal layers (installed for the whole fit, so that the recomputation of
        #: checkpointed blocks during backward sees exactly what their forward saw)
        self.anchor = anchor
        self.kv_controller = AttentionController() if anchor is not None else None
        self._installed = contextlib.ExitStack()

    def on_fit_start(self) -> None:
        self.unet.train()  # LoRA dropout is active in train mode only
        installed = self._installed
        frozen = frozen_weights_dtype(self.trainer.precision, self.device, self.unet.dtype)
        log.info(
            "motion LoRA training: checkpointing %s, frozen UNet weights in %s%s, LoRA weights "
            "and AdamW state in float32",
            self.checkpointing,
            str(frozen).removeprefix("torch."),
            "" if frozen == self.unet.dtype else f" (cast from {self.unet.dtype} for the fit)",
        )
        installed.enter_context(frozen_weights_in(self.unet, frozen, self.lora_params))
        installed.enter_context(checkpointed(self.unet, self.checkpointing))
        if self.kv_controller is not None:
            self.anchor = self.anchor.to(self.device)
            installed.enter_context(controlled_attention(self.unet, self.kv_controller))

    def on_fit_end(self) -> None:
        self.uninstall()

    def teardown(self, stage: str) -> None:
        self.uninstall()  # also when fit stops on an exception

    def uninstall(self) -> None:
        """The UNet as the fit found it: no checkpointing, no attention controller, frozen
        weights in their dtype (the LoRA stays). Safe to call twice."""
        self._installed.close()

    def anchor_keys_values(self, step: int, sigma: float) -> MemoryStore:
        """Clip 0's temporal keys and values at noise level ``sigma``, from the base UNet (the
        LoRA off, as in clip 0's inversion), with no gradient."""
        anchor, controller = self.anchor, self.kv_controller
        _, noise = self.draw(step, anchor.latents)
        store = MemoryStore()
        controller.kv_capture, controller.kv_extra = store, None
        with torch.no_grad(), lora_disabled(self.unet):
            denoise(self.unet, anchor.latents + sigma * noise, sigma, anchor.cond)
        controller.kv_capture = None
        return store

    def micro_step(self, batch_idx: int) -> int:
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return self.global_step * accumulate + batch_idx % accumulate

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.micro_step(batch_idx)
        latents = batch["latents"]
        sigma, noise = self.draw(step, latents)
        if self.anchor is not None:  # kept until the next step: backward recomputes with it
            self.kv_controller.kv_extra = self.anchor_keys_values(step, sigma)
        torch.manual_seed(self.seed + step)  # LoRA dropout, reproducible across resumes
        cond = Condition(
            batch["embeddings"], batch["image_latents"], batch["time_ids"], guided=False
        )
        denoised = denoise(self.unet, latents + sigma * noise, sigma, cond)
        loss = edm_loss(denoised, latents, sigma)
        self.log("loss", loss, prog_bar=True, on_step=True, batch_size=1)
        self.log("sigma", sigma, on_step=True, batch_size=1)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.lora_params, lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if "lora_" in k
        }


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete ``checkpoint-<step>`` folders under ``folder``, ascending."""
    if not folder.is_dir():
        return []
    steps = []
    for child in folder.iterdir():
        name, _, step = child.name.partition("-")
        if (
            name == "checkpoint"
            and step.isdigit()
            and (child / "adapter_model.safetensors").is_file()
        ):
            steps.append(int(step))
    return sorted(steps)


class StepReport(L.Callback):
    """Reports every optimizer step to the step listener (``i2vedit.progress.report_step``),
    which may stop training by raising ``Cancelled``; the checkpoints already written are
    whole."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        report_step(self.stage, trainer.global_step, trainer.max_steps)


class LoRACheckpoint(L.Callback):
    """Every ``every`` optimizer steps: ``checkpoint-<step>/`` (LoRA weights + peft config) and
    the resumable trainer state ``resume.ckpt``, both written atomically."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every, self.last = folder, every, -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last or step % self.every:
            return
        self.last = step
        resume = self.folder / RESUME_NAME
        if not trainer.is_global_zero:  # a collective call; only global zero writes the file
            trainer.save_checkpoint(resume, weights_only=False)
            return
        # resume.ckpt is replaced only once the LoRA checkpoint of its step is whole
        with atomic_path(resume) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
            save_lora(module.unet, module.lora_config, self.folder / f"checkpoint-{step}")
        loss = trainer.callback_metrics.get("loss")
        shown = f"{float(loss):.4f}" if loss is not None else "n/a"
        log.info("step %d, loss %s: saved %s", step, shown, self.folder / f"checkpoint-{step}")
