"""``fastmetro app``: a web page (Gradio, the ``app`` extra) to run FastMETRO on photos, webcam
snapshots and videos, with an interactive 3D view, attention maps and downloads.

Layers: ``models`` (one loaded model per checkpoint, on its own thread), ``service`` (a request ->
files and a message, no web framework), ``samples`` (the gallery), ``ui`` (the Gradio page),
``server`` (putting it together), ``commands`` (the CLI).
"""
