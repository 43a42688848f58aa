"""The Gradio page of ``i2vedit-app`` and the web app around it.

One job runs per device (Gradio's queue, ``concurrency_limit`` = the number of accelerators,
or 1 on the CPU); later submissions wait and the page shows their place in the queue. A job's
plan, then every step of every stage, streams to the page; Cancel stops it at the next step.
Results are served from the job's own folder by a small route of ours (``jobs/<id>/<file>``)."""

from __future__ import annotations

import html
import logging
import os
import queue
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

from i2vedit.app.jobs import (
    AUTO_MASK,
    MODELS,
    AppState,
    EditRequest,
    Job,
    JobResult,
    Plan,
    beta_presets,
    check_upload,
    compose_edit,
    describe_metrics,
    first_frame_png,
    items,
    make_plan,
    run_job,
)
from i2vedit.errors import InputError
from i2vedit.models.registry import path_options
from i2vedit.progress import Cancelled
from i2vedit.tasks.source import source_paths

log = logging.getLogger(__name__)

UPLOAD = "(upload a video)"
ITEM_MODEL = "(the item's model)"
CUSTOM = "custom"
MASK_SLOTS = 4  #: edited first frames that get a mask input; later ones are left unmasked
NO_MASK, IMAGE_MASK = "none", "image"
MASK_MODES = (NO_MASK, AUTO_MASK, IMAGE_MASK)

#: keeps the source and the edits of one result in step: play, pause and seek move them all
SYNC_JS = """
<script>
(() => {
  const peers = (v) => {
    const group = v.closest('.i2v-sync');
    return group ? [...group.querySelectorAll('video')].filter((o) => o !== v) : [];
  };
  const relay = (type, act) => document.addEventListener(type, (e) => {
    if (e.target instanceof HTMLVideoElement) peers(e.target).forEach((o) => act(e.target, o));
  }, true);
  relay('play', (v, o) => { o.currentTime = v.currentTime; if (o.paused) o.play().catch(() => {}); });
  relay('pause', (v, o) => { if (!o.paused) o.pause(); });
  relay('seeked', (v, o) => {
    if (Math.abs(o.currentTime - v.currentTime) > 0.05) o.currentTime = v.currentTime;
  });
})();
</script>
"""

CSS = """
.i2v-sync { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 16px; }
.i2v-sync figure { margin: 0; }
.i2v-sync video { width: 320px; max-width: 100%; background: #000; }
.i2v-error { color: #b00020; font-family: monospace; }
.i2v-masks { display: flex; flex-wrap: wrap; gap: 12px; }
.i2v-masks figure { margin: 0; }
.i2v-masks img { width: 256px; image-rendering: pixelated; }
"""


def _error_line(err: InputError) -> str:
    return f"error: {err}"


@dataclass
class Ticket:
    """A session's latest submission: Cancel sets ``cancel``; the job stops at its next step
    (or, still queued, does not start)."""

    cancel: threading.Event = field(default_factory=threading.Event)


class Page:
    """The page's handlers over one ``AppState`` (kept apart from the layout for tests)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.tickets: dict[str, Ticket] = {}
        self.sessions: dict[str, list[Job]] = {}
        self.defaults = state.defaults()
        self.presets = beta_presets()

    # ---- inputs -> request

    def request(
        self,
        job: Job | None,
        item: str,
        video: str | None,
        keyframes: list[str] | None,
        start_t: float,
        end_t: float,
        sample_fps: float,
        output_fps: float,
        beta1: float,
        beta2: float,
        mask1: float,
        mask2: float,
        lora_steps: float,
        sarp: bool,
        num_steps: float,
        seed: float,
        model: str,
        model_path: str,
        mask_modes: list[str] | None = None,
        mask_files: list[str | None] | None = None,
    ) -> EditRequest:
        """The page's fields as an ``EditRequest``; uploads are checked and, given a job,
        copied into its folder. ``mask_modes`` (none, auto, image) and ``mask_files`` are the
        mask slots, one per edited first frame (an item's own: the first slot)."""
        s = self.state.settings
        chosen_item = None if item in (None, UPLOAD) else item
        if chosen_item is None and not video:
            raise InputError("data.video_path", None, "upload a source video or pick an item")
        if chosen_item is None and not keyframes:
            raise InputError("data.keyframe_paths", None, "upload at least one edited first frame")
        video_path = None
        if video:
            name = Path(video).name
            check_upload(Path(video), "data.video_path", list(s.video_types), s.max_upload_mb, name)
            video_path = (
                Path(video)
                if job is None
                else self.state.folders.add_upload(job, Path(video), name)
            )
        frames = []
        for path in keyframes or []:
            name = Path(path).name
            check_upload(
                Path(path), "data.keyframe_paths", list(s.image_types), s.max_upload_mb, name
            )
            frames.append(
                Path(path) if job is None else self.state.folders.add_upload(job, Path(path), name)
            )
        return EditRequest(
            item=chosen_item,
            video=video_path,
            keyframes=frames,
            start_t=float(start_t),
            end_t=float(end_t),
            sample_fps=float(sample_fps),
            output_fps=float(output_fps),
            beta=(float(beta1), float(beta2)),
            mask_thr=(float(mask1), float(mask2)),
            lora_steps=int(lora_steps),
            sarp=bool(sarp),
            num_steps=int(num_steps),
            seed=int(seed),
            model=None if model in (None, ITEM_MODEL) else model,
            model_path=model_path or None,
            masks=None if mask_modes is None else self.masks(job, mask_modes, mask_files, frames),
        )

    def masks(
        self,
        job: Job | None,
        modes: list[str],
        files: list[str | None] | None,
        keyframes: list[Path],
    ) -> list[str | Path | None]:
        """Per edited first frame (the visible slots), ``AUTO_MASK``, its checked mask image
        (copied into the job's folder) or None."""
        s = self.state.settings
        files = list(files or [None] * len(modes))
        out: list[str | Path | None] = []
        for i, (mode, path) in enumerate(zip(modes, files, strict=True)):
            if i >= max(1, len(keyframes)):
                break
            key = f"data.mask_paths[{i}]"
            if mode == AUTO_MASK:
                out.append(AUTO_MASK)
            elif mode == IMAGE_MASK:
                if not path:
                    raise InputError(key, None, "upload a mask image (white: the edited region)")
                name = Path(path).name
                check_upload(Path(path), key, list(s.image_types), s.max_upload_mb, name)
                out.append(
                    Path(path)
                    if job is None
                    else self.state.folders.add_upload(job, Path(path), name)
                )
            elif mode in (NO_MASK, None):
                out.append(None)
            else:
                raise InputError(key, mode, f"expected one of {list(MASK_MODES)}")
        return out

    # ---- handlers

    def settings_of(self, item: str) -> list:
        """The page's settings as an item sets them (the app's defaults for an upload):
        start, end, fps, output fps, preset, beta, mask_thr, LoRA steps, SARP, steps, seed,
        model."""
        if item in (None, UPLOAD):
            cfg, model = self.defaults, self.state.settings.default_model
        else:
            try:
                cfg = compose_edit([*self.state.base_overrides(), f"+item={item}"])
            except InputError:
                cfg = self.defaults
            model = ITEM_MODEL
        d, am = cfg.data, cfg.attention_matching
        beta = (float(am.beta[0]), float(am.beta[1]))
        preset = next((n for n, v in self.presets.items() if v == beta), CUSTOM)
        return [
            float(d.start_t),
            float(d.end_t or 0),
            float(d.sample_fps),
            float(d.output_fps or 0),
            preset,
            *beta,
            *(float(v) for v in am.mask_thr),
            int(cfg.lora.checkpoint or 0),
            bool(cfg.sarp.enabled),
            int(cfg.num_steps),
            int(cfg.seed),
            model,
        ]

    def mask_modes_of(self, item: str) -> list[str]:
        """The mask slots as an item sets ``data.mask_paths`` (auto, or none; the app's
        defaults for an upload)."""
        cfg = self.defaults
        if item not in (None, UPLOAD):
            try:
                cfg = compose_edit([*self.state.base_overrides(), f"+item={item}"])
            except InputError:
                pass
        given = list(cfg.data.mask_paths or [])
        return [
            AUTO_MASK if i < len(given) and given[i] == AUTO_MASK else NO_MASK
            for i in range(MASK_SLOTS)
        ]

    def mask_slots(self, keyframes: list[str] | None) -> list:
        """Show one mask slot per edited first frame (one for an item's own), named by it."""
        names = [Path(k).name for k in keyframes or []]
        shown = max(1, len(names))
        radios = [
            gr.update(
                visible=i < shown,
                label=f"mask of {names[i] if i < len(names) else 'the edited first frame'}",
            )
            for i in range(MASK_SLOTS)
        ]
        return [*radios, *(gr.update(visible=i < shown) for i in range(MASK_SLOTS))]

    def first_frame(self, item: str, video: str | None, start_t: float):
        """The source's first frame (at start_t), to download and edit elsewhere."""
        if item in (None, UPLOAD) and not video:
            return None, None, ""
        try:
            if video:
                s = self.state.settings
                name = Path(video).name
                check_upload(
                    Path(video), "data.video_path", list(s.video_types), s.max_upload_mb, name
                )
                source = Path(video)
            else:
                cfg = compose_edit([*self.state.base_overrides(), f"+item={item}"])
                source = source_paths(cfg)[0]
            folder = self.state.folders.scratch("frames") / uuid.uuid4().hex[:12]
            out = folder / f"{source.stem}_first_frame.png"
            png = first_frame_png(source, float(start_t or 0.0), out)
        except InputError as err:
            return None, None, _error_line(err)
        return str(png), str(png), ""

    def plan(self, values: dict[str, Any]):
        """The plan table and each masked edit's first-frame mask over the frame, or an
        error line; no model loads."""
        try:
            request = self.request(None, **values)
            cfg = compose_edit([*self.state.job_overrides(request, None), "output_dir=unused"])
            plan = make_plan(cfg, self.state.settings.max_frames)[0]
            return plan.markdown(), masks_html(plan.masks), ""
        except InputError as err:
            return "", "", _error_line(err)

    def submit(self, request: gr.Request):
        """Runs at once (not queued): a new ticket for this session's submission."""
        self.tickets[request.session_hash] = Ticket()
        return "waiting for a free device..."

    def cancel(self, request: gr.Request):
        ticket = self.tickets.get(request.session_hash)
        if ticket is None:
            return "nothing to cancel"
        ticket.cancel.set()
        return "cancelling: the job stops at its next step"

    def close_session(self, request: gr.Request) -> None:
        """The page was closed: its jobs' files go."""
        for job in self.sessions.pop(request.session_hash, []):
            self.state.folders.remove(job)
        self.tickets.pop(request.session_hash, None)

    def run(self, values: dict[str, Any], request: gr.Request, progress: gr.Progress):
        """Plan, then edit, streaming (plan, stages, status, results) to the page."""
        ticket = self.tickets.setdefault(request.session_hash, Ticket())
        if ticket.cancel.is_set():
            yield "", "", "", "cancelled before it started", ""
            return
        folders = self.state.folders
        job = folders.new()
        events: queue.Queue = queue.Queue()
        stages: dict[str, tuple[int, int]] = {}
        outcome: dict[str, object] = {}

        def listener(stage: str, done: int, total: int) -> None:
            events.put((stage, done, total))
            if ticket.cancel.is_set():
                raise Cancelled(f"{stage} at step {done} of {total}")

        def work() -> None:
            try:
                req = self.request(job, **values)
                outcome["result"] = run_job(self.state, req, job, events.put, listener)
            except BaseException as err:  # handed to the page below
                outcome["error"] = err

        worker = threading.Thread(target=work, name=f"i2vedit-job-{job.id}", daemon=True)
        plan_md, masks, status = "", "", "running"
        try:
            worker.start()
            yield "", "", "", "checking the input and planning...", ""
            while worker.is_alive() or not events.empty():
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    continue
                if isinstance(event, Plan):
                    plan_md, masks = event.markdown(), masks_html(event.masks)
                else:
                    stage, done, total = event
                    stages[stage] = (done, total)
                    progress((done, total), desc=stage)
                yield plan_md, masks, _stages_markdown(stages), status, ""
            worker.join()
        finally:
            if worker.is_alive():  # the page went away mid-job: stop it at the next step
                ticket.cancel.set()
                worker.join()
                folders.remove(job)
        error = outcome.get("error")
        if error is not None:
            folders.remove(job)
            if isinstance(error, Cancelled):
                status = (
                    f"cancelled ({error}): stages that finished stay in the cache for the "
                    "next run; nothing half-written was kept"
                )
            elif isinstance(error, InputError):
                status = _error_line(error)
            else:
                log.error("job %s failed", job.id, exc_info=error)
                status = f"error: {type(error).__name__}: {error}"
            yield plan_md, masks, _stages_markdown(stages), status, ""
            return
        result: JobResult = outcome["result"]
        folders.finish(job)
        self.sessions.setdefault(request.session_hash, []).append(job)
        total = sum(result.seconds.values())
        status = f"done in {total:.1f} s: {len(result.edited)} edit(s), {result.frames} frames each"
        yield plan_md, masks, _stages_markdown(stages), status, results_html(result)


def masks_html(masks: list[tuple[np.ndarray, str]]) -> str:
    """The plan's mask overlays as captioned images (inline PNGs, shown pixel-sharp)."""
    import base64
    import io

    from PIL import Image

    parts = []
    for image, caption in masks:
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        data = base64.b64encode(png.getvalue()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f'<div class="i2v-masks">{"".join(parts)}</div>' if parts else ""


def _stages_markdown(stages: dict[str, tuple[int, int]]) -> str:
    if not stages:
        return ""
    lines = ["| stage | steps |", "|---|---|"]
    for stage, (done, total) in stages.items():
        bar = "#" * round(20 * done / max(1, total))
        lines.append(f"| {stage} | `{bar:<20}` {done}/{total} |")
    return "\n".join(lines)


def results_html(result: JobResult) -> str:
    """Each edit beside the source and, for a masked edit, its mask video (all played in
    step), download links, the metrics and the config to rerun the edit with i2vedit-edit."""
    job = result.job.id

    def url(path: Path, download: bool = False) -> str:
        return f"jobs/{job}/{html.escape(path.name)}" + ("?download=1" if download else "")

    def video(path: Path, label: str) -> str:
        return (
            f"<figure><figcaption>{html.escape(label)}</figcaption>"
            f'<video src="{url(path)}" controls muted loop playsinline preload="auto" '
            f'data-frames="{result.frames}"></video><br>'
            f'<a class="i2v-download" href="{url(path, True)}" download>download {html.escape(path.name)}</a>'
            "</figure>"
        )

    parts = []
    for edited in result.edited:
        shown = [video(result.source, "source"), video(edited, edited.stem)]
        if edited.stem in result.masks:
            shown.append(video(result.masks[edited.stem], f"{edited.stem}: mask"))
        parts.append(
            f'<div class="i2v-sync" id="i2v-result-{html.escape(edited.stem)}">'
            + "".join(shown)
            + "</div>"
        )
    rows = describe_metrics(result.metrics)
    if rows:
        parts.append("<table><tr><th>edit</th><th>metric</th><th>value</th></tr>")
        parts += [
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        ]
        parts.append("</table>")
    files = [result.rerun, result.config]
    files += [p for p in (result.config.parent / "metrics.json",) if p.is_file()]
    links = " · ".join(
        f'<a class="i2v-download" href="{url(p, True)}" download>{html.escape(p.name)}</a>'
        for p in files
    )
    inputs = ", ".join(p.name for p in sorted(result.job.inputs.iterdir()))
    parts.append(
        f"<p>Downloads: {links}</p><p>Rerun this edit from a folder holding "
        f"<code>{html.escape(inputs or 'nothing (an item)')}</code>: "
        f"<code>i2vedit-edit --config-dir . --config-name rerun</code> "
        "(with the downloaded rerun.yaml beside them).</p>"
    )
    return "\n".join(parts)


def build_page(state: AppState) -> tuple[gr.Blocks, Page, gr.themes.Base]:
    """The Blocks layout wired to a ``Page``."""
    page = Page(state)
    d = page.defaults
    s = state.settings
    presets = page.presets
    default_beta = tuple(float(v) for v in d.attention_matching.beta)
    preset_names = list(presets)
    default_preset = next((n for n, v in presets.items() if v == default_beta), CUSTOM)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"])
    with gr.Blocks(title="i2vedit", analytics_enabled=False, delete_cache=(600, 3600)) as blocks:
        gr.Markdown(
            "# i2vedit\nEdit the first frame of a video in any image editor; i2vedit carries "
            "the edit through the whole video with the source's motion."
        )
        with gr.Row():
            with gr.Column():
                item = gr.Dropdown(
                    [UPLOAD, *items()], value=UPLOAD, label="source", elem_id="i2v-item"
                )
                video = gr.File(
                    label=f"source video ({', '.join(s.video_types)}; at most "
                    f"{s.max_upload_mb:g} MB)",
                    elem_id="i2v-video",
                )
                first = gr.Image(
                    label="first frame (at the start time): download it and edit it",
                    type="filepath",
                    interactive=False,
                    elem_id="i2v-first-frame",
                )
                first_file = gr.File(label="first frame (PNG)", interactive=False)
            with gr.Column():
                keyframes = gr.File(
                    label="edited first frame(s): one edited video each "
                    f"({', '.join(s.image_types)}); with an item, empty means the item's own",
                    file_count="multiple",
                    elem_id="i2v-keyframes",
                )
                mask_modes, mask_files, modes = [], [], page.mask_modes_of(UPLOAD)
                with gr.Accordion("masks: where each edit may change the video", open=False):
                    for i in range(MASK_SLOTS):
                        with gr.Row():
                            mask_modes.append(
                                gr.Radio(
                                    list(MASK_MODES),
                                    value=modes[i],
                                    label="mask of the edited first frame",
                                    info="none: the whole frame; auto: where the edited frame "
                                    "differs from the source; image: white marks the region",
                                    visible=i == 0,
                                    elem_id=f"i2v-mask-mode-{i}",
                                )
                            )
                            mask_files.append(
                                gr.File(
                                    label="mask image",
                                    file_types=list(s.image_types),
                                    visible=i == 0,
                                    elem_id=f"i2v-mask-file-{i}",
                                )
                            )
                with gr.Row():
                    start_t = gr.Number(
                        float(d.data.start_t), label="start (s)", minimum=0, elem_id="i2v-start"
                    )
                    end_t = gr.Number(
                        float(d.data.end_t or 0), label="end (s, 0: the end)", minimum=0
                    )
                with gr.Row():
                    sample_fps = gr.Number(float(d.data.sample_fps), label="frames per second")
                    output_fps = gr.Number(
                        float(d.data.output_fps or 0), label="output fps (0: the same)"
                    )
        with gr.Accordion("settings", open=True):
            with gr.Row():
                preset = gr.Radio(
                    [*preset_names, CUSTOM],
                    value=default_preset,
                    label="temporal window (attention_matching.beta)",
                )
                beta1 = gr.Slider(0, 1, default_beta[0], step=0.05, label="beta1")
                beta2 = gr.Slider(0, 1, default_beta[1], step=0.05, label="beta2")
            with gr.Row():
                mask = [float(v) for v in d.attention_matching.mask_thr]
                mask1 = gr.Slider(0, 1, mask[0], step=0.05, label="mask_thr, first frame")
                mask2 = gr.Slider(0, 1, mask[1], step=0.05, label="mask_thr, last frame")
                lora_steps = gr.Number(
                    int(d.lora.checkpoint or 0),
                    label="motion LoRA steps (0: none; trained once, then cached)",
                    minimum=0,
                    precision=0,
                )
                sarp = gr.Checkbox(bool(d.sarp.enabled), label="SARP")
            with gr.Row():
                num_steps = gr.Slider(
                    1, 100, int(d.num_steps), step=1, label="steps", elem_id="i2v-steps"
                )
                seed = gr.Number(int(d.seed), label="seed", precision=0)
                model = gr.Dropdown(
                    [ITEM_MODEL, *MODELS],
                    value=s.default_model if s.default_model in MODELS else ITEM_MODEL,
                    label="model",
                )
                model_path = gr.Textbox(
                    s.default_model_path or "",
                    label=f"model path ({'/'.join(path_options())}: folder or hub id)",
                )
        with gr.Row():
            plan_button = gr.Button("plan", elem_id="i2v-plan")
            run_button = gr.Button("run", variant="primary", elem_id="i2v-run")
            cancel_button = gr.Button("cancel", variant="stop", elem_id="i2v-cancel")
        status = gr.Markdown(elem_id="i2v-status")
        plan = gr.Markdown(elem_id="i2v-plan-table")
        plan_masks = gr.HTML(elem_id="i2v-plan-masks")
        stages = gr.Markdown(elem_id="i2v-stages")
        results = gr.HTML(elem_id="i2v-results", js_on_load=None)

        #: the fields a job reads, by the names of ``Page.request``'s parameters
        named = {
            "item": item,
            "video": video,
            "keyframes": keyframes,
            "start_t": start_t,
            "end_t": end_t,
            "sample_fps": sample_fps,
            "output_fps": output_fps,
            "beta1": beta1,
            "beta2": beta2,
            "mask1": mask1,
            "mask2": mask2,
            "lora_steps": lora_steps,
            "sarp": sarp,
            "num_steps": num_steps,
            "seed": seed,
            "model": model,
            "model_path": model_path,
        }
        slots = {"mask_modes": mask_modes, "mask_files": mask_files}
        # Gradio then passes one {component: value} dict
        fields = {*named.values(), *mask_modes, *mask_files}

        def by_name(data: dict) -> dict[str, Any]:
            values = {name: data[component] for name, component in named.items()}
            return values | {name: [data[c] for c in group] for name, group in slots.items()}

        def plan_on_page(data: dict):
            return page.plan(by_name(data))

        def run_on_page(data: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            yield from page.run(by_name(data), request, progress)

        def pick_preset(name: str):
            if name in presets:
                return presets[name]
            return gr.update(), gr.update()

        preset.change(pick_preset, preset, [beta1, beta2], queue=False)
        settings = [start_t, end_t, sample_fps, output_fps, preset, beta1, beta2, mask1, mask2]
        settings += [lora_steps, sarp, num_steps, seed, model]
        frame_io = ([item, video, start_t], [first, first_file, status])
        item.change(page.settings_of, item, settings).then(page.first_frame, *frame_io)
        item.change(page.mask_modes_of, item, mask_modes)
        keyframes.change(page.mask_slots, keyframes, [*mask_modes, *mask_files])
        for mode, file in zip(mask_modes, mask_files, strict=True):
            file.upload(lambda _: IMAGE_MASK, file, mode, queue=False)
        for trigger in (video.change, start_t.change):
            trigger(page.first_frame, *frame_io)
        plan_button.click(plan_on_page, fields, [plan, plan_masks, status])
        run_button.click(page.submit, None, status, queue=False).then(
            run_on_page,
            fields,
            [plan, plan_masks, stages, status, results],
            concurrency_limit=len(state.slots),
            concurrency_id="edit",
        )
        cancel_button.click(page.cancel, None, status, queue=False)
        blocks.unload(page.close_session)
    return blocks, page, theme


def create_app(state: AppState) -> FastAPI:
    """The FastAPI app: the page at /, results at jobs/<id>/<file>."""
    # Gradio keeps uploads in its own folder: put it inside the app's, which goes with the app
    os.environ["GRADIO_TEMP_DIR"] = str(state.folders.scratch("uploads"))
    blocks, _, theme = build_page(state)
    blocks.queue(max_size=int(state.settings.queue_size), default_concurrency_limit=1)
    app = FastAPI(title="i2vedit")

    @app.get("/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str, download: int = 0) -> FileResponse:
        path = state.folders.file(job_id, name)
        if path is None:
            raise HTTPException(status_code=404, detail="no such result (it may have expired)")
        media = {".mp4": "video/mp4", ".yaml": "text/yaml", ".json": "application/json"}
        return FileResponse(
            path,
            media_type=media.get(path.suffix, "application/octet-stream"),
            filename=path.name if download else None,
            content_disposition_type="attachment" if download else "inline",
        )

    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        allowed_paths=[str(state.folders.root)],
        max_file_size=f"{int(state.settings.max_upload_mb)}mb",
        ssr_mode=False,
        theme=theme,
        css=CSS,
        head=SYNC_JS,
        footer_links=[],
    )


def serve(state: AppState) -> None:
    """Serve until interrupted; the job folders go with the app."""
    import uvicorn

    app = create_app(state)
    s = state.settings
    log.info(
        "i2vedit-app on http://%s:%d (%d device(s): %s); jobs in %s",
        s.server_name,
        s.server_port,
        len(state.slots),
        ", ".join(map(str, state.slots.devices)),
        state.folders.root,
    )
    started = time.perf_counter()

    def stop(signum: int, _frame) -> None:  # uvicorn re-raises the signal once it has shut down
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        uvicorn.run(app, host=s.server_name, port=int(s.server_port), log_level="warning")
    finally:
        state.folders.close()
        log.info(
            "i2vedit-app stopped after %.0f s; job folders removed", time.perf_counter() - started
        )
