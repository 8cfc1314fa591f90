"""The page (Gradio Blocks): inputs on the left, results on the right; image and video tabs.

Gradio is imported here only (the ``app`` extra). Each button calls :class:`AppService`; the page
shows its message in a Markdown box, so bad input reads as a sentence in the page and the app
goes on serving.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from fastmetro.app.samples import Sample
from fastmetro.app.service import AppService
from fastmetro.errors import FastMetroError

TITLE = "FastMETRO: 3D human mesh from one image"
INTRO = (
    "Upload a photo (or take a webcam snapshot, or pick a sample), give the person's box, and get a "
    "3D mesh placed over the person; a video or the webcam (Live) gives every person a track. "
    "**Boxes**: type `x, y, w, h` in pixels (several people: separate "
    "them with `;`) or click two opposite corners on the image. Without a box the app finds the people "
    "itself (MediaPipe's BlazePose; hands for hand models) unless it was started with `--detector none`."
)
NO_JOINT = "(none)"


@dataclass
class Upload:
    """An uploaded file as the handlers get it: where it is, and the name the user's file had."""

    path: str
    name: str


class ImageUpload(gr.Image):
    """``gr.Image`` that hands over the uploaded file untouched (no decoding in the framework), so
    fastmetro's loader reads it and a file that is not an image becomes fastmetro's message."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return Upload(payload.path, Path(payload.orig_name or "image.png").name)
        path = super().preprocess(payload)  # a webcam/clipboard data URL: written to a file
        return None if path is None else Upload(str(path), "snapshot.png")


def build_page(service: AppService, samples: list[Sample], has_detector: bool) -> gr.Blocks:
    models = list(service.slots)
    first_joints, first_is_hand = service.model_info(models[0])
    joints = [NO_JOINT, *first_joints]
    # delete_cache: every hour, drop served copies older than an hour (long-running servers).
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        model = gr.Dropdown(models, value=models[0], label="Model", visible=len(models) > 1, elem_id="model")
        side = gr.Radio(
            ["right", "left"],
            value="right",
            label="Hand side (hand models)",
            visible=first_is_hand,
            elem_id="hand-side",
        )
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = ImageUpload(
                        label="Image", sources=["upload", "webcam", "clipboard"], type="filepath", elem_id="input-image"
                    )
                    boxes = gr.Textbox(
                        label="Boxes x, y, w, h (pixels)", placeholder="e.g. 120, 20, 300, 490", elem_id="boxes"
                    )
                    corner = gr.State(None)
                    hint = gr.Markdown("", elem_id="box-hint")
                    joint = gr.Dropdown(
                        joints, value=NO_JOINT, label="Attention maps for joint (paper Fig. 6)", elem_id="joint"
                    )
                    rig = gr.Checkbox(
                        False, label="Animatable: fit the body model, rigged .glb + .bvh (~0.5 s per person)",
                        elem_id="rig",
                    )  # fmt: skip
                    flip = gr.Checkbox(
                        False, label="Flip test: also run each person mirrored and average (bodies; ~1.5x the time)",
                        elem_id="flip-test",
                    )  # fmt: skip
                    with gr.Row():
                        clear = gr.Button("Clear boxes")
                        run = gr.Button("Reconstruct", variant="primary", elem_id="run-image")
                    if samples:
                        gr.Examples(
                            [[s.path, s.boxes] for s in samples],
                            inputs=[image, boxes],
                            example_labels=[s.label for s in samples],
                            label="Samples",
                        )
                with gr.Column(scale=2):
                    status = gr.Markdown("", elem_id="status")
                    overlay = gr.Image(
                        label="Input | mesh over it | side view", type="filepath", interactive=False, elem_id="overlay"
                    )
                    scene = gr.Model3D(
                        label="3D scene (drag to turn, scroll to zoom)",
                        elem_id="scene",
                        clear_color=(1.0, 1.0, 1.0, 1.0),
                        height=420,
                    )
                    attention = gr.Gallery(
                        label="Attention of the chosen joint",
                        columns=2,
                        height="auto",
                        elem_id="attention",
                        visible=False,
                    )
                    downloads = gr.File(
                        label="Downloads (.obj, .ply, .glb, .json, rigged _rig.glb and .bvh, all as .zip)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="downloads",
                    )
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="Video", sources=["upload"], include_audio=True, elem_id="input-video")
                    video_boxes = gr.Textbox(
                        label="Boxes x, y, w, h for every frame (empty: "
                        + ("detector" if has_detector else "whole frame")
                        + ")",
                        elem_id="video-boxes",
                    )
                    video_rig = gr.Checkbox(
                        False, label="Animatable: each track as a rigged, animated .glb + .bvh", elem_id="video-rig"
                    )
                    run_video = gr.Button("Reconstruct every frame", variant="primary", elem_id="run-video")
                with gr.Column(scale=2):
                    video_status = gr.Markdown("", elem_id="video-status")
                    video_out = gr.Video(label="Meshes over the frames", interactive=False, elem_id="output-video")
                    video_downloads = gr.File(
                        label="Downloads (video, per-frame .json as .zip)", file_count="multiple", interactive=False
                    )

        with gr.Tab("Live"):
            gr.Markdown(
                "The webcam's frames, one after another: every person tracked (one colour and id each) and "
                "smoothed with a causal One-Euro filter, the frames per second on the picture."
            )
            with gr.Row():
                with gr.Column(scale=1):
                    camera = gr.Image(
                        label="Webcam", sources=["webcam"], streaming=True, type="numpy", elem_id="live-camera"
                    )
                with gr.Column(scale=1):
                    live_status = gr.Markdown("", elem_id="live-status")
                    live_out = gr.Image(label="Tracks", type="numpy", interactive=False, elem_id="live-output")
            live_session = gr.State(None)

        def on_image(model_label, upload, box_text, joint_name, hand_side, animatable, flip_test):
            upload = upload or Upload("", "")
            outcome = service.analyse_image(
                model_label,
                upload.path,
                upload.name,
                box_text,
                None if joint_name in (None, NO_JOINT) else joint_name,
                hand_side,
                bool(animatable),
                bool(flip_test),
            )
            status_text = outcome.message if outcome.ok else f"**Error:** {outcome.message}"
            maps = [(str(path), caption) for path, caption in outcome.attention]
            return (
                status_text,
                _str(outcome.overlay),
                _str(outcome.scene),
                gr.update(value=maps or None, visible=bool(maps)),
                [str(path) for path in outcome.downloads] or None,
            )

        def on_video(model_label, path, box_text, hand_side, animatable, progress=gr.Progress()):  # noqa: B008 (Gradio reads the default)
            name = Path(path).name if path else None
            # The frames run on the model's thread; Gradio finds the request's progress bar
            # through context variables, so the report runs in a copy of this thread's context.
            context = contextvars.copy_context()

            def report(done, total):
                context.run(progress, (done, total) if total else done, desc="frames", unit="frames")

            outcome = service.analyse_video(model_label, path, name, box_text, hand_side, report, bool(animatable))
            status_text = outcome.message if outcome.ok else f"**Error:** {outcome.message}"
            return status_text, _str(outcome.video), [str(p) for p in outcome.downloads] or None

        def on_live(model_label, frame, session, hand_side):
            return service.live_frame(model_label, frame, session, hand_side)

        def on_click(box_text, first_corner, event: gr.SelectData):
            x, y = (float(v) for v in event.index)
            if first_corner is None:
                return box_text, (x, y), f"First corner at ({x:.0f}, {y:.0f}): click the opposite corner."
            (x0, y0) = first_corner
            new = f"{min(x, x0):.0f}, {min(y, y0):.0f}, {abs(x - x0):.0f}, {abs(y - y0):.0f}"
            text = f"{box_text.strip()}; {new}" if box_text and box_text.strip() else new
            return text, None, f"Box added: {new}."

        def on_model(model_label):
            try:
                names, hand = service.model_info(model_label)
            except FastMetroError as error:
                message = f"**Error:** {service.public(str(error))}"
                return gr.update(choices=[NO_JOINT], value=NO_JOINT), gr.update(), message
            return gr.update(choices=[NO_JOINT, *names], value=NO_JOINT), gr.update(visible=hand), ""

        inference: dict[str, Any] = {"concurrency_limit": 1, "concurrency_id": "inference"}
        run.click(
            on_image,
            [model, image, boxes, joint, side, rig, flip],
            [status, overlay, scene, attention, downloads],
            **inference,
        )
        run_video.click(
            on_video,
            [model, video, video_boxes, side, video_rig],
            [video_status, video_out, video_downloads],
            **inference,
        )
        camera.stream(
            on_live,
            [model, camera, live_session, side],
            [live_out, live_status, live_session],
            stream_every=0.1,
            show_progress="hidden",
            **inference,
        )
        image.select(on_click, [boxes, corner], [boxes, corner, hint])
        clear.click(lambda: ("", None, ""), None, [boxes, corner, hint])
        model.change(on_model, [model], [joint, side, status], **inference)
    return page


def _str(path) -> str | None:
    return None if path is None else str(path)


__all__ = ["build_page", "ImageUpload", "Upload"]
