"""A memory model of full-size runs, without a GPU: the peak accelerator memory of each stage of
an edit and of a motion-LoRA training step, computed on the CPU without allocating it.

The real architectures (the full-size SVD or SVD-XT UNet, temporal VAE and CLIP image encoder,
``i2vedit.models.specs``) are built on the meta device and given fake storage on the modeled
accelerator (``FakeTensorMode``: shapes, dtypes and devices, no data). The project's own stages
then run on them: the edit through ``bench_edit.run_chain`` (the runner's ``invert_clip``,
``edit_condition``, ``edit_clip``, ``decode_clip``), training through
``MotionLoRAModule.training_step`` and its AdamW. :class:`LiveBytes`, a ``TorchDispatchMode``,
adds up the bytes of the live storages on the device (weights, activations, saved tensors,
optimizer state; each untyped storage once, rounded up to the CUDA caching allocator's 512-byte
blocks, released when its finalizer fires) and keeps the peak of each stage.

What the accelerator does differently is emulated where it changes memory:

- attention: ``F.scaled_dot_product_attention`` on the accelerator runs the fused kernel CUDA
  picks (flash for bf16/fp16 with head_dim <= 256, else memory-efficient), which keeps only its
  output and log-sum-exp (a fake CUDA tensor would otherwise fall back to the math kernel, which
  materialises the attention matrix);
- autocast (training, bf16-mixed): the backward pass needs a device the autograd engine can run
  on, so training is modeled on fake CPU tensors under CPU autocast, with CUDA's float32 op list
  (layer_norm, group_norm, softmax, ...) applied on top (:func:`cuda_autocast_policy`);
- host work stays on the host: ops on real host tensors (the scheduler's sigmas, seeded
  generators, the synthetic clip) run for real and are not counted.

Left out: the allocator's fragmentation and cached free blocks, library workspaces (cuBLAS,
cuDNN, flash attention), the CUDA context, and temporaries inside a kernel. ``--gpu-check``
measures them on a real GPU.

    python experiments/memory_model.py --threads 1              # tables into docs/BENCHMARKS.md
    python experiments/memory_model.py --json --no-write        # the same rows as JSON records
    python experiments/memory_model.py --check                  # a small edit vs MemTracker
    python experiments/memory_model.py --gpu-check              # a small real CUDA run vs the model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

EXPERIMENTS = Path(__file__).resolve().parent
if str(EXPERIMENTS) not in sys.path:  # run as a script, experiments/ is already first
    sys.path.insert(0, str(EXPERIMENTS))

from benchlib import (  # noqa: E402  (benchlib also puts src/ on the path if needed)
    BENCHMARKS_MD,
    GB,
    Meter,
    compose_config,
    environment_lines,
    markdown_table,
    show,
    write_section,
)
from i2vedit.attention import store as store_module  # noqa: E402
from i2vedit.files import atomic_path  # noqa: E402
from i2vedit.models.specs import build_full_size_pipeline  # noqa: E402
from i2vedit.models.svd import LoadedModel  # noqa: E402
from i2vedit.progress import setup_logging  # noqa: E402

log = logging.getLogger("memory_model")

GIB = 2**30
#: the CUDA caching allocator's smallest block: each storage takes a multiple of it
ALLOCATOR_BLOCK = 512
#: the accelerator whose memory is modeled (a fake device: nothing is allocated on it)
ACCELERATOR = torch.device("cuda", 0)
#: the memory the modeled accelerator reports (the memory store's budget is this less what is
#: live and ``attention_matching.memory_reserve_gb``): an 80 GB card
CAPACITY = 80 * GB

EDIT_STORES = ("recompute", "memory", "disk")
#: the edit rows: (conf/model option, frames, height, width)
EDIT_SIZES = (("svd", 14, 576, 1024), ("svd_xt", 25, 576, 1024))
#: ``lora.checkpointing`` policies of the training rows
CHECKPOINTING = ("none", "diffusers", "blocks")
#: dtypes of the frozen UNet weights in the training rows (the LoRA and AdamW are fp32)
FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: the training rows: (conf/model option, frames, height, width)
TRAIN_SIZES = (("svd", 14, 512, 896), ("svd", 14, 576, 1024))
#: the edit's stages as ``bench_edit.run_chain`` names its rows (less the store's tag)
EDIT_STAGES = {
    "SARP, VAE encode, source conditioning": "CLIP and VAE encode",
    "inversion": "inversion",
    "conditioning": "keyframe conditioning",
    "guided sampling": "guided sampling",
    "VAE decode": "VAE decode",
}

aten = torch.ops.aten


# --------------------------------------------------------------------------- the tracker


class LiveBytes(TorchDispatchMode):
    """Bytes of the live storages on devices of ``device_type``: every tensor an op returns is
    counted once per untyped storage (views share it), by its ``nbytes`` rounded up to
    ``block``, until its storage is freed (tensors made before are added with
    :meth:`track_modules`, :meth:`track_all`). ``peak`` is the most since :meth:`reset_peak`."""

    def __init__(self, device_type: str, block: int = 1) -> None:
        super().__init__()
        self.device_type, self.block = device_type, block
        self.live = self.peak = 0
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != self.device_type:
            return
        storage = tensor.untyped_storage()
        if storage in self._sizes:
            return
        size = -(-storage.nbytes() // self.block) * self.block
        self._sizes[storage] = size
        weakref.finalize(storage, self._release, size)
        self.live += size
        self.peak = max(self.peak, self.live)

    def _release(self, size: int) -> None:
        self.live -= size

    def track_all(self, tensors) -> None:
        for tensor in tensors:
            self.track(tensor)

    def track_modules(self, *modules: torch.nn.Module) -> None:
        for module in modules:
            self.track_all([*module.parameters(), *module.buffers()])

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


class MemTrackerBytes:
    """``torch.distributed._tools.mem_tracker.MemTracker`` behind :class:`LiveBytes`'s
    interface (``live``, ``peak``, ``reset_peak``) for one device, as the check's reference."""

    def __init__(self, device: torch.device) -> None:
        from torch.distributed._tools.mem_tracker import MemTracker

        self.tracker, self.device = MemTracker(), device
        # only its totals are read: its per-module statistics refuse a module called twice
        # in one tracking (the UNet, once per step), so their hooks do nothing here
        for hook in ("_pre_fw_hook", "_post_fw_hook", "_pre_bw_hook", "_post_bw_hook"):
            setattr(self.tracker, hook, _no_hook)

    @property
    def live(self) -> int:
        snapshot = self.tracker.get_tracker_snapshot("current")
        return snapshot.get(self.device, {}).get("Total", 0)

    @property
    def peak(self) -> int:
        return max(self.tracker._peak_mem.get(self.device, 0), self.live)

    def reset_peak(self) -> None:
        self.tracker._peak_mem[self.device] = self.live  # no public reset of the peak

    def track_modules(self, *modules: torch.nn.Module) -> None:
        self.tracker.track_external(*modules)
        for module in modules:  # frozen weights: MemTracker's gradient hooks cannot go on them
            for param in module.parameters():
                if not param.requires_grad:
                    self.tracker._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())

    def __enter__(self):
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.tracker.__exit__(*exc)


def _no_hook(*args) -> None:
    pass


class _NoHook:
    def remove(self) -> None:
        pass


@dataclass
class TrackedMeter(Meter):
    """benchlib's stage meter with the peak and the held bytes of a tracker (``LiveBytes``,
    ``MemTrackerBytes``) instead of the device's counters."""

    tracker: object = None

    def _reset(self) -> None:
        self.tracker.reset_peak()

    def _peak(self) -> int:
        return self.tracker.peak

    def _held(self) -> int:
        return self.tracker.live


# --------------------------------------------------------------------------- the fake device


class HostOps(TorchDispatchMode):
    """What runs for real under the fake mode: host bookkeeping (the scheduler's sigmas, seeded
    draws, the synthetic inputs). An op runs for real when it reads no fake tensor and makes
    nothing on the modeled accelerator (host memory is not modeled); on the modeled CPU, an op
    that reads real tensors or a generator and no fake tensor (a factory op without either
    makes a fake tensor). Real tensors going into a fake op become fake ones. A scalar read from a fake tensor (no values are modeled) is True
    for a bool (a finiteness check) and 1 otherwise (AdamW's step count)."""

    def __init__(self, device_type: str, fake: FakeTensorMode) -> None:
        super().__init__()
        self.device_type, self.fake = device_type, fake

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if isinstance(first, FakeTensor):
            if func is aten._local_scalar_dense.default:
                return True if first.dtype == torch.bool else 1
            if func is aten._pin_memory.default:  # pinned host memory: host memory
                return first
            if func is aten.is_pinned.default:
                return False
        if self._real(func, args, kwargs):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        args, kwargs = tree_map_only(torch.Tensor, self._as_fake, (args, kwargs))
        return func(*args, **kwargs)

    def _real(self, func, args, kwargs) -> bool:
        leaves = tree_leaves((args, kwargs))
        if any(isinstance(x, FakeTensor) or getattr(x, "is_meta", False) for x in leaves):
            return False  # meta tensors: weights being given fake storage
        if self.device_type != "cpu":
            return not any(
                isinstance(x, torch.device) and x.type == self.device_type for x in leaves
            )
        return any(isinstance(x, (torch.Tensor, torch.Generator)) for x in leaves)

    def _as_fake(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, FakeTensor):
            return tensor
        with unset_fake_temporarily():
            return self.fake.from_tensor(tensor)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, dropout: float
) -> torch.Tensor:
    """The fused kernel CUDA's SDPA picks for unmasked attention: flash (bf16/fp16, head_dim
    <= 256) or memory-efficient; both keep only the output and the log-sum-exp."""
    if q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256:
        return aten._scaled_dot_product_flash_attention(q, k, v, dropout, False, scale=scale)[0]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return aten._scaled_dot_product_efficient_attention(
        q, k, v, None, grad, dropout, False, scale=scale
    )[0]


class FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` on the modeled accelerator as :func:`fused_attention`
    (a fake CUDA tensor cannot ask the device which kernel it supports)."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            plain = kwargs.get("attn_mask") is None and not kwargs.get("is_causal", False)
            if q.device.type == self.device_type and plain and len(args) == 3:
                return fused_attention(q, k, v, kwargs.get("scale"), kwargs.get("dropout_p", 0.0))
        return func(*args, **kwargs)


#: CUDA autocast's float32 list (torch.amp docs) among the ``torch.nn.functional`` functions
#: the UNet and the loss call: under CPU autocast these run in bf16, on CUDA in fp32
CUDA_FP32_FUNCTIONS = ("layer_norm", "group_norm", "softmax", "log_softmax", "mse_loss")


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """Within CPU autocast, the functions of :data:`CUDA_FP32_FUNCTIONS` get float32 inputs, as
    CUDA's autocast gives them (above autograd: backward keeps the fp32 copies, as on CUDA).
    The functions themselves are wrapped, not a torch-function mode: a checkpoint's
    recomputation during backward does not see modes."""
    originals = {name: getattr(F, name) for name in CUDA_FP32_FUNCTIONS}

    def upcast(x):
        low = isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16)
        return x.float() if low else x

    def fp32(original: Callable) -> Callable:
        def call(*args, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                args = tuple(upcast(a) for a in args)
                kwargs = {key: upcast(value) for key, value in kwargs.items()}
            return original(*args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(F, name, fp32(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(F, name, original)


class _Inline:
    """An executor running each call in the calling thread, where the fake mode is (a thread of
    its own does not see it). ``deferred``: a call runs when its result is first asked for."""

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred

    def submit(self, fn: Callable, *args) -> Future:
        future = _DeferredFuture(fn, args)
        if not self.deferred:
            future.result()
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class _DeferredFuture(Future):
    def __init__(self, fn: Callable, args: tuple) -> None:
        super().__init__()
        self._call = (fn, args)

    def result(self, timeout=None):
        if self._call is not None:
            (fn, args), self._call = self._call, None
            self.set_result(fn(*args))
        return super().result(timeout)


@contextlib.contextmanager
def shapes_only_disk_store() -> Iterator[None]:
    """``DiskStore`` under fake tensors: each step's file holds its records' shapes and dtypes,
    reading makes (fake) tensors of them on the store's device, and both run in the calling
    thread. The writer's worst case is kept: an index handed to the writer stays resident until
    the next index is handed over (a disk slower than a UNet step)."""
    disk = store_module.DiskStore
    originals = disk.__init__, disk._write, disk._read

    def init(self, *args, **kwargs) -> None:
        originals[0](self, *args, **kwargs)
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)
        self._writer, self._reader = _Inline(deferred=True), _Inline()

    def write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        path = store_module.step_file(self.folder, index)
        shapes = {
            key: [list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in tensors.items()
        }
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(shapes))
        self.written_bytes += nbytes
        self.checksums[f"{store_module.RECORDS_DIR}/{path.name}"] = {"bytes": nbytes}

    def read(self, index: int) -> dict[str, torch.Tensor]:
        shapes = json.loads(store_module.step_file(self.folder, index).read_text())
        return {
            key: torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            for key, (shape, dtype) in shapes.items()
        }

    disk.__init__, disk._write, disk._read = init, write, read
    try:
        yield
    finally:
        disk.__init__, disk._write, disk._read = originals


@contextlib.contextmanager
def modeled_memory_info(device_type: str, tracker, capacity: int) -> Iterator[None]:
    """``torch.accelerator.get_memory_info`` of the modeled device: ``capacity`` less what is
    live (the memory store's budget and ``choose_store`` read it)."""
    if device_type == "cpu":
        yield
        return
    original = torch.accelerator.get_memory_info
    torch.accelerator.get_memory_info = lambda *_: (capacity - tracker.live, capacity)
    try:
        yield
    finally:
        torch.accelerator.get_memory_info = original


@contextlib.contextmanager
def fake_parameters_convert() -> Iterator[None]:
    """``Module.to()`` of fake parameters (CLIP moved to the host and back): torch swaps fake
    parameters for their converted copies, which the fake mode's weak references to them
    forbid; the parameter then takes the copy's data and device instead."""
    original = torch.utils.swap_tensors

    def swap(t1: torch.Tensor, t2: torch.Tensor) -> None:
        try:
            original(t1, t2)
        except RuntimeError:
            if not (isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor)):
                raise
            t1.data = t2.data
            t1.fake_device = t2.fake_device

    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


class TensorNormalize:
    """The CLIP image processor's normalisation in torch, for fake tensors (its numpy path
    cannot read them); real tensors go to the processor itself."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, images, **kwargs):
        if not isinstance(images, FakeTensor):
            return self.processor(images=images, **kwargs)
        mean = torch.tensor(self.processor.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.processor.image_std).view(1, -1, 1, 1)
        return argparse.Namespace(pixel_values=(images - mean.to(images)) / std.to(images))


@dataclass
class FakeDevice:
    """The modes of a modeled run on ``device`` (fake tensors), counting into ``tracker``."""

    device: torch.device
    tracker: object
    capacity: int = CAPACITY
    autocast: bool = False
    mode: FakeTensorMode = field(default_factory=lambda: FakeTensorMode(allow_non_fake_inputs=True))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        kind = self.device.type
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.mode)
            stack.enter_context(HostOps(kind, self.mode))
            stack.enter_context(self.tracker)
            if kind != "cpu":
                stack.enter_context(FusedAttention(kind))
            if self.autocast:
                stack.enter_context(cuda_autocast_policy())
            stack.enter_context(shapes_only_disk_store())
            stack.enter_context(fake_parameters_convert())
            stack.enter_context(modeled_memory_info(kind, self.tracker, self.capacity))
            yield


# --------------------------------------------------------------------------- models


def meta_pipeline(option: str, dtype: torch.dtype, seed: int = 0):
    """The pipeline of ``option`` (svd, svd_xt: full size; tiny) with meta weights in
    ``dtype`` (the VAE in fp32 under fp16, as ``load_model`` does)."""
    meta = torch.device("meta")
    if option != "tiny":
        return build_full_size_pipeline(meta, dtype, seed, option)
    from i2vedit.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.requires_grad_(False).eval()
        module.to(device=meta, dtype=dtype)
    if dtype == torch.float16:
        pipe.vae.to(dtype=torch.float32)
    return pipe


def fake_model(pipe, device: torch.device, dtype: torch.dtype, name: str) -> LoadedModel:
    """The meta pipeline ``pipe`` with fake weights on ``device``; call within the fake mode
    (building is not: the scheduler's constructor computes)."""
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.to_empty(device=device)
    pipe.feature_extractor = TensorNormalize(pipe.feature_extractor)
    return LoadedModel(pipe, device, dtype, f"{name}, fake weights")


# --------------------------------------------------------------------------- the edit


def edit_config(option: str, frames: int, height: int, width: int, overrides=()) -> DictConfig:
    """``conf/edit.yaml`` with the model option ``option`` at this size (and ``overrides``)."""
    cfg = compose_config("edit", [f"model={option}", *overrides])
    cfg.model.num_frames, cfg.model.resolution = frames, [height, width]
    return cfg


def run_edit(cfg: DictConfig, model: LoadedModel, store: str, meter: Meter):
    """The runner's stages of one clip and one keyframe (``bench_edit.run_chain``), the
    records of the disk store in a temporary folder; returns its ``ChainResult``."""
    from bench_edit import run_chain, synthetic_clip

    (height, width), frames = cfg.model.resolution, cfg.model.num_frames
    with unset_fake_temporarily():
        clip, keyframe = synthetic_clip(frames, height, width)  # real host inputs
    with tempfile.TemporaryDirectory(prefix="i2vedit-memory-", ignore_cleanup_errors=True) as tmp:
        cfg.paths.cache_dir = tmp
        return run_chain(cfg, model, clip, keyframe, meter, store)


def edit_stage_rows(meter: Meter, extra: int = 0) -> list[tuple[str, int]]:
    """(stage, peak bytes) of each row of the edit, named as :data:`EDIT_STAGES`; ``extra``
    bytes added to every stage from the inversion on."""
    rows = []
    for i, row in enumerate(meter.rows):
        name = row.name.rsplit(" [", 1)[0]
        rows.append((EDIT_STAGES.get(name, name), row.peak + (extra if i else 0)))
    return rows


def record_step_bytes(store, block: int) -> int:
    """Device bytes of one step of records in a memory store (each record its own storage)."""
    records = [t for (index, _, _), t in store._data.items() if index == 0]
    return sum(-(-t.untyped_storage().nbytes() // block) * block for t in records)


def memory_store_extra(cfg: DictConfig, meter: Meter, result, steps: int, block: int) -> int:
    """Bytes the memory store holds on the device after ``cfg.num_steps`` steps beyond what it
    held after the modeled ``steps``: one step of records per step, up to the store's budget
    (the modeled capacity less what was live when inversion began and
    ``attention_matching.memory_reserve_gb``); beyond it records wait in host memory."""
    per_step = record_step_bytes(result.store, block)
    held = meter.rows[0].held
    budget = CAPACITY - held - cfg.attention_matching.memory_reserve_gb * GB
    kept = min(cfg.num_steps * per_step, max(0, budget))
    if result.store.offloaded:
        raise RuntimeError("the modeled steps' records already exceed the memory store's budget")
    return int(kept - steps * per_step)


def model_edit(
    option: str,
    frames: int,
    height: int,
    width: int,
    store: str,
    overrides=(),
    device: torch.device = ACCELERATOR,
    steps: int = 2,
) -> list[tuple[str, int]]:
    """Modeled peak bytes per stage of an edit with ``store`` (weights included), running
    ``steps`` of the config's ``num_steps``: one index of records is live at a time with
    ``recompute`` and ``disk`` (their peaks do not depend on the step count), and the memory
    store's records of the steps not run are added (:func:`memory_store_extra`)."""
    cfg = edit_config(option, frames, height, width, overrides)
    dtype = resolve_edit_dtype(cfg, device)
    block = 1 if device.type == "cpu" else ALLOCATOR_BLOCK
    fake = FakeDevice(device, LiveBytes(device.type, block))
    pipe = meta_pipeline(option, dtype, cfg.model.seed)
    run_cfg = cfg.copy()
    run_cfg.num_steps = min(steps, cfg.num_steps)
    with fake.active():
        model = fake_model(pipe, device, dtype, option)
        fake.tracker.track_modules(model.unet, model.vae, model.pipe.image_encoder)
        meter = TrackedMeter(torch.device("meta"), tracker=fake.tracker)
        result = run_edit(run_cfg, model, store, meter)
    extra = 0
    if store == "memory" and cfg.attention_matching.enabled:
        extra = memory_store_extra(cfg, meter, result, run_cfg.num_steps, block)
    return edit_stage_rows(meter, extra)


def resolve_edit_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """The edit's dtype on ``device``: ``dtype=auto`` is bf16 on an accelerator (an H100 or
    H200 supports it), fp32 on the CPU."""
    from i2vedit.models.device import _DTYPES

    if cfg.dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return _DTYPES[cfg.dtype]


# --------------------------------------------------------------------------- training


def checkpointing_policies() -> tuple[str, ...]:
    """The ``lora.checkpointing`` values the training rows cover: the package's own list."""
    from i2vedit.training import checkpointing

    return tuple(getattr(checkpointing, "POLICIES", CHECKPOINTING))


def train_batch(cfg: DictConfig, model: LoadedModel, frames: int, height: int, width: int):
    """One clip's batch as ``OneClipDataModule`` serves it, on the model's device."""
    scale = model.pipe.vae_scale_factor
    shape = (1, frames, model.unet.config.out_channels, height // scale, width // scale)
    device, dtype = model.device, model.dtype
    return {
        "latents": torch.empty(shape, device=device),
        "embeddings": torch.empty(
            1, 1, model.unet.config.cross_attention_dim, device=device, dtype=dtype
        ),
        "image_latents": torch.empty(shape, device=device, dtype=dtype),
        "time_ids": torch.empty(1, 3, device=device, dtype=dtype),
    }


def lora_module(cfg: DictConfig, unet: torch.nn.Module):
    """``MotionLoRAModule`` on ``unet`` as ``i2vedit-train`` makes it (``motion_lora_config``,
    ``lora.*``), with the LoRA injected while the UNet is still on the meta device."""
    from i2vedit.core.lora import motion_lora_config
    from i2vedit.training.module import MotionLoRAModule

    lora = cfg.lora
    config = motion_lora_config(unet, lora.rank, lora.alpha, lora.dropout)
    return MotionLoRAModule(unet, config, lora.lr, lora.weight_decay, cfg.seed, lora.checkpointing)


def run_train_steps(module, batch: dict, meter: Meter, steps: int = 1) -> None:
    """``steps`` optimizer steps of the ``MotionLoRAModule`` (its ``training_step``, backward,
    its ``configure_optimizers``' AdamW) under bf16 autocast, with its own
    ``lora.checkpointing``; each step's forward, backward and optimizer step as stages."""
    from i2vedit.training.checkpointing import checkpointed

    optimizer = module.configure_optimizers()
    for param in module.lora_params:  # AdamW's state first (a step on zero gradients)
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    module.unet.train()
    with checkpointed(module.unet, module.checkpointing):
        for step in range(steps):
            tag = "" if step == steps - 1 else f" (step {step + 1})"
            with meter.stage(f"forward{tag}"):
                with torch.autocast(module.unet.device.type, dtype=torch.bfloat16):
                    loss = module.training_step(batch, step)
            with meter.stage(f"backward{tag}"):
                loss.backward()
                del loss
            with meter.stage(f"optimizer step{tag}"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def model_train(
    option: str, frames: int, height: int, width: int, policy: str, frozen: str
) -> list[tuple[str, int]]:
    """Modeled peak bytes per stage of one motion-LoRA training step (its AdamW state already
    there) with checkpointing ``policy`` and the frozen weights in ``frozen`` (fp32, bf16);
    the VAE and CLIP stay loaded, as ``i2vedit-train`` keeps them."""
    cfg = compose_config("train", [f"model={option}", f"lora.checkpointing={policy}"])
    device = torch.device("cpu")  # fake CPU tensors: the autograd engine runs backward on them
    dtype = FROZEN_DTYPES[frozen]
    fake = FakeDevice(device, LiveBytes(device.type, ALLOCATOR_BLOCK), autocast=True)
    pipe = meta_pipeline(option, dtype, cfg.model.seed)
    module = lora_module(cfg, pipe.unet)
    with fake.active():
        model = fake_model(pipe, device, dtype, option)
        # fake parameters are new objects: the module's list follows them
        module.lora_params = [p for p in model.unet.parameters() if p.requires_grad]
        fake.tracker.track_modules(model.unet, model.vae, model.pipe.image_encoder)
        batch = train_batch(cfg, model, frames, height, width)
        meter = TrackedMeter(torch.device("meta"), tracker=fake.tracker)
        run_train_steps(module, batch, meter)
    return [(row.name, row.peak) for row in meter.rows if "(step" not in row.name]


# --------------------------------------------------------------------------- rows


def record(
    run: str, model: str, frames: int, height: int, width: int, setting: str, stage: str, peak: int
) -> dict:
    return {
        "run": run,
        "model": model,
        "frames": frames,
        "height": height,
        "width": width,
        "setting": setting,
        "stage": stage,
        "peak_gib": round(peak / GIB, 3),
    }


def predict(
    run: str,
    model: str,
    frames: int,
    height: int,
    width: int,
    setting: str,
    overrides=(),
    steps: int = 2,
) -> list[dict]:
    """The modeled peaks of one run as JSON records, one per stage and a ``peak`` row.

    ``run``: ``edit`` (``setting``: a store, ``recompute``, ``memory``, ``disk``, or ``auto``,
    which is ``recompute`` on an accelerator; ``overrides``: edit config overrides) or
    ``train`` (``setting``: ``<lora.checkpointing>/<frozen dtype>``, e.g. ``blocks/bf16``).
    ``model``: a ``conf/model`` option (svd, svd_xt; tiny for checks)."""
    if run == "edit":
        store = "recompute" if setting == "auto" else setting
        if store not in EDIT_STORES:
            raise ValueError(f"edit setting {setting!r}: expected auto or one of {EDIT_STORES}")
        stages = model_edit(model, frames, height, width, store, overrides, steps=steps)
    elif run == "train":
        policy, _, frozen = setting.partition("/")
        if policy not in checkpointing_policies() or frozen not in FROZEN_DTYPES:
            raise ValueError(
                f"train setting {setting!r}: expected <policy>/<{'|'.join(FROZEN_DTYPES)}>"
            )
        stages = model_train(model, frames, height, width, policy, frozen)
    else:
        raise ValueError(f"run {run!r}: expected edit or train")
    stages.append(("peak", max(peak for _, peak in stages)))
    return [record(run, model, frames, height, width, setting, *stage) for stage in stages]


def edit_settings() -> list[tuple[str, int, int, int, str]]:
    return [(m, f, h, w, store) for m, f, h, w in EDIT_SIZES for store in EDIT_STORES]


def train_settings() -> list[tuple[str, int, int, int, str]]:
    return [
        (m, f, h, w, f"{policy}/{frozen}")
        for m, f, h, w in TRAIN_SIZES
        for policy in checkpointing_policies()
        for frozen in FROZEN_DTYPES
    ]


def gib_gb(value: float) -> str:
    """GiB with GB (1e9 bytes) after it."""
    return f"{value:.2f} ({value * GIB / GB:.2f})"


def stage_table(rows: list[dict], key_columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows grouped by ``key_columns``, one column per stage (peak GiB, GB in brackets)."""
    stages: list[str] = []
    groups: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if row["stage"] not in stages:
            stages.append(row["stage"])
        key = tuple(row[c] for c in key_columns)
        groups.setdefault(key, {})[row["stage"]] = row["peak_gib"]
    header = [*key_columns, *(f"{s}: GiB (GB)" for s in stages)]
    table = [
        [*(str(k) for k in key), *(gib_gb(v[s]) if s in v else "" for s in stages)]
        for key, v in groups.items()
    ]
    return header, table


# --------------------------------------------------------------------------- checks

#: the check's small edit: (conf/model option, frames, height, width, store)
CHECK_EDIT = ("tiny", 8, 32, 48, "recompute")
#: --gpu-check's small real edit: the full-size architecture on a short, small clip
GPU_CHECK_EDIT = ("svd", 8, 256, 448)


def real_model(option: str, cfg: DictConfig, device: torch.device, dtype: torch.dtype):
    """``option``'s model with real (random) weights on ``device``, as a run loads it."""
    from i2vedit.models.svd import load_model

    if option == "tiny":
        m = cfg.model
        return load_model(m.kind, m.path, m.seed, m.variant, device, dtype)
    pipe = build_full_size_pipeline(device, dtype, cfg.model.seed, option)
    return LoadedModel(pipe, device, dtype, f"{option}, random weights")


def measure_edit(
    option: str,
    frames: int,
    height: int,
    width: int,
    store: str,
    device: torch.device,
    steps: int = 2,
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The same edit with real tensors on ``device``: per-stage peaks from MemTracker on the
    CPU, from ``max_memory_allocated`` on an accelerator (with its reserved and driver-level
    used memory at the end, to size what the model leaves out)."""
    from benchlib import empty_cache

    cfg = edit_config(option, frames, height, width, [f"num_steps={steps}"])
    dtype = resolve_edit_dtype(cfg, device)
    model = real_model(option, cfg, device, dtype)
    if device.type == "cpu":
        tracker = MemTrackerBytes(device)
        meter = TrackedMeter(torch.device("meta"), tracker=tracker)
        with tracker:
            tracker.track_modules(model.unet, model.vae, model.pipe.image_encoder)
            run_edit(cfg, model, store, meter)
        return edit_stage_rows(meter), {}
    empty_cache(device)
    meter = Meter(device)
    run_edit(cfg, model, store, meter)
    free, total = torch.cuda.mem_get_info(device)
    info = {
        "max allocated": torch.cuda.max_memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
        "max reserved": torch.cuda.max_memory_reserved(device),
        "driver-level used": total - free,
    }
    return edit_stage_rows(meter), info


def compare(
    option: str, frames: int, height: int, width: int, store: str, device: torch.device
) -> tuple[list[list[str]], float, dict[str, int]]:
    """Model vs measurement of one edit, per stage: table rows, the largest relative
    difference, and the measured extras."""
    modeled = model_edit(option, frames, height, width, store, device=device)
    measured, info = measure_edit(option, frames, height, width, store, device)
    rows, worst = [], 0.0
    for (stage, model_bytes), (_, real_bytes) in zip(modeled, measured, strict=True):
        diff = (model_bytes - real_bytes) / real_bytes
        worst = max(worst, abs(diff))
        rows.append([stage, f"{model_bytes:,}", f"{real_bytes:,}", f"{100 * diff:+.3f}%"])
    return rows, worst, info


def run_check(args: argparse.Namespace) -> int:
    """``--check`` (MemTracker on the CPU) and ``--gpu-check`` (CUDA): a small edit modeled
    and measured; prints both per stage."""
    if args.gpu_check:
        device = torch.device(args.device) if args.device else ACCELERATOR
        setting = (*GPU_CHECK_EDIT, "recompute")
    else:
        device = torch.device(args.device) if args.device else torch.device("cpu")
        setting = CHECK_EDIT
    rows, worst, info = compare(*setting, device)
    reference = "MemTracker" if device.type == "cpu" else "max_memory_allocated"
    header = ["stage", "modeled (B)", f"measured, {reference} (B)", "difference"]
    lines = [f"largest difference {100 * worst:.3f}%"]
    lines += [f"{name}: {value / GB:.3f} GB" for name, value in info.items()]
    show(f"memory model vs {reference}: {setting}", header, rows, lines)
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "worst": worst, **info}) + "\n")
    return 0


# --------------------------------------------------------------------------- entry point


#: part of the edit rows: the default edit before issue 15's changes to its peak (decode and
#: VAE encode in chunks of 8, CLIP kept on the accelerator)
BEFORE = ("model.decode_chunk_size=8", "model.offload_image_encoder=false")


def planned(what: str) -> list[tuple[str, tuple, tuple]]:
    """(run, (model, frames, height, width, setting), overrides) of the rows ``what`` asks for:
    ``edit``, ``train``, ``before`` (the default edit before the changes of its peak)."""
    if what == "edit":
        return [("edit", s, ()) for s in edit_settings()]
    if what == "train":
        return [("train", s, ()) for s in train_settings()]
    return [("edit", (m, f, h, w, "recompute"), BEFORE) for m, f, h, w in EDIT_SIZES]


def compute_rows(args: argparse.Namespace) -> list[dict]:
    """The rows of ``--rows``, each run's appended to ``--save`` (JSON lines) as it ends; runs
    already there are not run again."""
    done = load_rows(args.save) if args.save and args.save.exists() else []
    rows = list(done)
    for what in args.rows:
        for run, setting, overrides in planned(what):
            tag = ",".join(overrides)
            name = f"{setting[4]}{' [' + tag + ']' if tag else ''}"
            key = (run, *setting[:4], name)
            if any(
                (r["run"], r["model"], r["frames"], r["height"], r["width"], r["setting"]) == key
                for r in done
            ):
                continue
            log.info("modeling %s %s", run, key[1:])
            new = predict(run, *setting[:4], setting[4], overrides, steps=args.steps)
            for row in new:
                row["setting"] = name
            rows += new
            if args.save:
                with args.save.open("a") as f:
                    f.writelines(json.dumps(row) + "\n" for row in new)
    return rows


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def setting_name(row: dict) -> str:
    """A row's setting with the overrides it ran with (rows saved by a driver keep them apart)."""
    overrides = row.get("overrides") or []
    return row["setting"] + (f" [{', '.join(overrides)}]" if overrides else "")


def report(rows: list[dict]) -> list[str]:
    """The section's body: the edit per store, the default edit before and after its peak was
    brought down, training per checkpointing policy and frozen dtype, and what is left out."""
    rows = [{**r, "setting": setting_name(r)} for r in rows]
    edit = [r for r in rows if r["run"] == "edit" and r["setting"] in EDIT_STORES]
    default = [r for r in rows if r["run"] == "edit" and r["setting"].startswith("recompute")]
    train = sorted(
        (r for r in rows if r["run"] == "train"), key=lambda r: (r["height"], r["setting"])
    )
    keys = ["model", "frames", "height", "width", "setting"]
    body = [*budget_lines(default), ""] if default else []
    body += [
        "Peak accelerator memory per stage, modeled on the CPU (`experiments/memory_model.py`):",
        "the full-size architectures with fake weights, the package's own stages, every live "
        "storage counted at the CUDA allocator's 512-byte granularity, weights included. "
        "GiB = 2^30 bytes, GB (in brackets) = 10^9 bytes.",
        "",
    ]
    for title, part in (
        ("Edit, per attention store (bf16 weights; the defaults of `conf/model`)", edit),
        (
            "The default edit (`store=auto`: `recompute` on an accelerator), before and after",
            default,
        ),
        ("Motion-LoRA training step, per `lora.checkpointing` and frozen-weight dtype", train),
    ):
        if part:
            header, table = stage_table(part, keys)
            body += [f"**{title}**", "", *markdown_table(header, table), ""]
    return body + NOTES


def budget_lines(rows: list[dict]) -> list[str]:
    """The default edit's peak before and after (``BEFORE``), against 12 GB, per model."""
    peaks = {(r["model"], r["frames"], r["setting"]): r["peak_gib"] * GIB / GB for r in rows}
    peaks = {k: v for k, v in peaks.items() if any(r["stage"] == "peak" for r in rows)}
    lines = []
    for (model, frames, setting), after in peaks.items():
        if setting != "recompute":
            continue
        before = next(
            (v for (m, f, s), v in peaks.items() if (m, f) == (model, frames) and s != setting),
            None,
        )
        peak = {
            r["stage"]: r["peak_gib"]
            for r in rows
            if (r["model"], r["frames"], r["setting"]) == (model, frames, setting)
        }
        where = max((s for s in peak if s != "peak"), key=peak.get)
        was = f"{before:.2f} GB before, " if before is not None else ""
        verdict = "within" if after <= 12 else "above"
        lines.append(
            f"- The default edit, {model} at 576x1024x{frames}: {was}{after:.2f} GB now "
            f"(peak in {where}), {verdict} 12 GB."
        )
    return lines


#: what the tables mean and what the model leaves out (the section's notes)
NOTES = [
    "- What brought the default edit down (issue 15, part 3): `model.decode_chunk_size` 8 -> 4 "
    "in `conf/model/svd*.yaml` (VAE encode and decode; the temporal decoder mixes the frames "
    "of one call, so the decoded frames at full size change slightly; tiny and toy keep 8, "
    "so no CPU figure moves) and `model.offload_image_encoder` (CLIP waits in host memory "
    "between encodings: 1.26 GB). SVD-XT's peak is now guided sampling: batch 2 of 25 frames "
    "plus one index of records (3.1 GB); below 12 GB would need the sampling pass itself "
    "changed (e.g. the two guidance halves run one after the other).",
    "- Stages of the edit (`bench_edit.run_chain`, the runner's own calls): *CLIP and VAE "
    "encode* is `invert_clip` up to its first step (SARP, the source's VAE latents, its CLIP "
    "and first-frame condition); *inversion* its EDM steps; *keyframe conditioning* "
    "`edit_condition`; *guided sampling* `edit_clip` (batch 2, attention matching; `recompute` "
    "adds a batch-1 source pass per step); *VAE decode* `decode_clip`. Each stage's peak is "
    "reset at its start; what is live across stages (weights, latents, records) counts in "
    "each.",
    "- Two of the 25 steps are run (a memory model in minutes on 2 CPU cores): with `recompute` "
    "and `disk` one index of records is live at a time (disk: the index being written and the "
    "one being collected, the writer's worst case; the index in use and the one read ahead), "
    "so the step count does not change the peak; the `memory` store's rows add the records of "
    "the 23 steps not run (exactly one step's bytes each) up to the store's budget on the "
    "modeled 80 GB card (`free - attention_matching.memory_reserve_gb`; beyond it records wait "
    "in pinned host memory).",
    "- Training: one step of `MotionLoRAModule.training_step`, backward and AdamW (its state "
    "created by a first step), LoRA r=32 on the temporal layers, bf16 autocast with CUDA's "
    "float32 list (layer_norm, group_norm, softmax) applied; VAE and CLIP stay loaded as "
    "`i2vedit-train` keeps them. Modeled on fake CPU tensors: the autograd engine cannot run "
    "backward on fake CUDA ones without a driver.",
    "- `memory` with SVD-XT: its records (3.1 GB a step) fill the budget, and sampling's "
    "working set is larger than `memory_reserve_gb` (8): the modeled peak reaches the 80 GB "
    "card's capacity, so on such a card it would run out of memory (`auto` picks `recompute`).",
    "- Left out: the CUDA context (about 0.5 GB per process), cuBLAS/cuDNN/flash-attention "
    "workspaces, the caching allocator's fragmentation and cached free blocks, and "
    "temporaries inside a kernel. `--gpu-check` measures them on a GPU (`max_memory_allocated`, "
    "`memory_reserved`, the driver's used memory); no GPU was available to this session, so "
    "the model is unchecked against one.",
    "- Check against `torch.distributed._tools.mem_tracker.MemTracker` (`--check`): the tiny "
    "edit (8 frames of 32x48, `recompute`, 2 steps) modeled on fake CPU tensors and run for "
    "real under MemTracker agree to the byte on 4 of 5 stages; the inversion's peak is 0.23% "
    "(49 KB) lower in the model. `tests/test_memory_model.py` (slow) asserts 1%.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=("edit", "before", "train"),
        default=["edit", "before", "train"],
    )
    parser.add_argument("--steps", type=int, default=2, help="edit steps modeled (default 2)")
    parser.add_argument("--save", type=Path, help="JSON lines of the rows, appended run by run")
    parser.add_argument(
        "--from", dest="load", type=Path, nargs="+", help="report saved JSON lines (no runs)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON records")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--check", action="store_true", help="a small edit: model vs MemTracker")
    parser.add_argument("--gpu-check", action="store_true", help="a small real run vs the model")
    parser.add_argument(
        "--device", help="the measured device of the checks (cuda with --gpu-check)"
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--section", default="Memory model (modeled on the CPU)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging(names=("i2vedit", "benchlib", "memory_model"))
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check or args.gpu_check:
        return run_check(args)
    rows = [r for path in args.load for r in load_rows(path)] if args.load else compute_rows(args)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    body = report(rows)
    for line in body:
        log.info("%s", line)
    if not args.no_write:
        extra = [
            "- Rows: `predict()` of each run in turn (`--rows edit before train --save "
            "rows.jsonl`; the figures below ran one run per process and were written with "
            "`--from`); the modeled accelerator: CUDA, 80 GB, bf16 weights (`dtype=auto`)",
        ]
        lines = environment_lines(torch.device("meta"), extra)
        write_section(args.out, args.section, [*lines, "", *body])
    return 0


if __name__ == "__main__":
    sys.exit(main())
