"""The motion LoRA: peft LoRA on every linear layer of the UNet's temporal transformer blocks,
saved as safetensors with its peft config, loaded, scaled, disabled and removed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from i2vedit.files import atomic_path, write_json

ADAPTER = "motion"
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def temporal_linear_layers(unet: nn.Module) -> list[str]:
    """Module paths of every ``nn.Linear`` inside a temporal transformer block."""
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, nn.Linear) and ".temporal_transformer_blocks." in name
    ]


def motion_lora_config(unet: nn.Module, rank: int, alpha: float, dropout: float) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=temporal_linear_layers(unet),
        init_lora_weights=True,
    )


def add_motion_lora(unet: nn.Module, config: LoraConfig) -> list[nn.Parameter]:
    """Inject the LoRA; freeze everything else. Returns the trainable LoRA parameters."""
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    params = []
    for name, param in unet.named_parameters():
        trainable = f"lora_A.{ADAPTER}" in name or f"lora_B.{ADAPTER}" in name
        param.requires_grad_(trainable)
        if trainable:
            params.append(param)
    return params


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER)


def save_lora(unet: nn.Module, config: LoraConfig, folder: Path) -> Path:
    """Write ``folder`` (weights + peft config) atomically: a temporary folder renamed in place
    (replacing an older one)."""
    with atomic_path(folder, folder=True) as tmp:
        state = {k: v.detach().cpu().clone().contiguous() for k, v in lora_state_dict(unet).items()}
        save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "adapter": ADAPTER})
        config_dict = config.to_dict()
        config_dict["target_modules"] = sorted(config_dict["target_modules"])
        write_json(tmp / CONFIG_NAME, config_dict, default=str)
    return folder


def read_lora_config(folder: Path) -> LoraConfig:
    data = json.loads((folder / CONFIG_NAME).read_text())
    known = set(LoraConfig.__dataclass_fields__)
    return LoraConfig(
        **{k: v for k, v in data.items() if k in known and k not in ("peft_type", "task_type")}
    )


def load_lora(unet: nn.Module, folder: Path, scale: float = 1.0) -> None:
    """Inject the LoRA saved in ``folder`` into ``unet`` and scale it (0 = the base UNet)."""
    config = read_lora_config(folder)
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    device = next(unet.parameters()).device
    state = load_file(folder / WEIGHTS_NAME, device=str(device))
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{folder}: LoRA does not fit this UNet ({len(missing)} missing keys)")
    for module in unet.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(ADAPTER, scale)
    unet.requires_grad_(False)


@contextlib.contextmanager
def lora_disabled(unet: nn.Module) -> Iterator[None]:
    """Run the base UNet with any injected LoRA switched off (e.g. for inversion)."""
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def remove_lora(unet: nn.Module) -> None:
    """Put every wrapped layer's base layer back: the UNet is exactly as before injection."""
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
    if "peft_config" in vars(unet):
        del unet.peft_config
