"""Put the app together (models, service, samples, page) and serve it.

Used by ``fastmetro app`` and by Python::

    from fastmetro.app.server import create_app
    app = create_app(["model.safetensors"], work_dir="/tmp/fastmetro-app")
    app.launch("127.0.0.1", 7860)          # blocks; app.launch(..., block=False) returns at once
"""

from __future__ import annotations

import os
from pathlib import Path

from fastmetro.app.models import ModelSettings, build_slots
from fastmetro.app.samples import bundled_samples, demo_samples
from fastmetro.app.service import MAX_MEGAPIXELS, MAX_VIDEO_FRAMES, AppService

#: Largest upload the server accepts (Gradio refuses bigger files before they reach fastmetro).
MAX_UPLOAD = "500mb"


class FastMetroApp:
    """The served page and what it runs on. ``launch`` starts the server; ``close`` stops it and
    releases the models' renderers."""

    def __init__(self, page, service: AppService, work_dir: Path):
        self.page = page
        self.service = service
        self.work_dir = work_dir

    def launch(self, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> None:
        import gradio as gr

        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        self.page.queue(default_concurrency_limit=1)
        self.page.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            show_error=False,
            allowed_paths=[str(self.work_dir)],
            max_file_size=MAX_UPLOAD,
            theme=theme,
            prevent_thread_lock=not block,
            quiet=False,
            mcp_server=False,
            footer_links=["gradio"],
        )

    def close(self) -> None:
        try:
            self.page.close()
        finally:
            for slot in self.service.slots.values():
                slot.close()


def create_app(
    checkpoints: list,
    work_dir: str | os.PathLike,
    device: str = "cpu",
    image_size: int | None = None,
    topology: str | None = None,
    data_dirs: list | tuple = (),
    detector=None,
    max_megapixels: float = MAX_MEGAPIXELS,
    max_video_frames: int = MAX_VIDEO_FRAMES,
) -> FastMetroApp:
    """Load the first model (the page lists its joints), make the samples and build the page."""
    work_dir = Path(work_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    # Uploads and Gradio's copies of the outputs live in the work folder, removed with it.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_dir / "gradio"))
    from fastmetro.app.ui import build_page  # Gradio reads the two variables above when imported

    settings = ModelSettings(
        device=device, image_size=image_size, topology=topology, data_dirs=tuple(str(d) for d in data_dirs)
    )
    slots = build_slots([Path(p) for p in checkpoints], settings, detector)
    slots[0].load().result()  # a bad first checkpoint fails here, with its one-line error
    service = AppService(
        slots,
        work_dir / "requests",
        detector=detector,
        max_megapixels=max_megapixels,
        max_video_frames=max_video_frames,
    )
    samples = bundled_samples(work_dir / "samples")
    for slot in slots[:1]:  # demo_output/run/last.safetensors -> demo_output/test_images
        samples += demo_samples(slot.checkpoint.parent.parent, work_dir / "samples")
    page = build_page(service, samples, has_detector=detector is not None)
    return FastMetroApp(page, service, work_dir)


__all__ = ["create_app", "FastMetroApp"]
