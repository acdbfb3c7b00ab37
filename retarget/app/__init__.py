"""``retarget app``: a local web app (Gradio) over the command line's jobs.

Tabs: Retarget (driving video + identity photo, like ``retarget run``), Edit (video + a photo, video or motion file
as expression source, like ``retarget edit``) and Motion (``retarget extract`` + ``retarget plot``). The jobs are
the command line's own functions; the model stays loaded between jobs. Needs the ``app`` extra
(``pip install -e ".[app]"``).
"""

from __future__ import annotations

from pathlib import Path

from retarget.errors import InputError


def gradio_missing() -> str | None:
    """None when Gradio can be imported, else the one-line hint to install the extra."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        return 'the app needs the "app" extra: pip install "retarget[app]" (or pip install -e ".[app]")'
    return None


def create_app(models=None, base_model: str | None = None, device: str | None = None, dtype: str | None = None):
    """``(blocks, service)``: the Gradio page and the :class:`~retarget.app.service.AppService` behind it (close the
    service to remove the job folders). ``models`` defaults to ``$RETARGET_MODELS`` or ``./models``."""
    message = gradio_missing()
    if message:
        raise InputError(message)
    from retarget.app.service import AppService, AppSettings
    from retarget.app.ui import build
    from retarget.faces.image_io import enable_heif
    from retarget.jobs.options import default_models_dir

    enable_heif()  # the photo widgets open uploads with Pillow: iPhone photos (HEIC) too, with the heif extra

    settings = AppSettings(models=Path(models) if models else default_models_dir(), base_model=base_model,
                           device=device, dtype=dtype)
    service = AppService(settings)
    return build(service), service


def launch_options(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> dict:
    """The keyword arguments of ``Blocks.launch`` for the app: address, public link, the upload size limit
    (:data:`~retarget.app.ui.MAX_UPLOAD`) and error text in the page."""
    from retarget.app.ui import MAX_UPLOAD

    return {"server_name": host, "server_port": port, "share": share, "max_file_size": MAX_UPLOAD,
            "inbrowser": False, "show_error": True}


def launch(models=None, base_model: str | None = None, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, device: str | None = None, dtype: str | None = None) -> None:
    """Serve the app at ``http://host:port`` until interrupted or terminated (``share``: also through a public
    Gradio link); the job folders are removed on the way out, and so are Gradio's copies of the uploads and
    results: they go to a temporary folder of this app's own (``GRADIO_TEMP_DIR``, unless it is set already)."""
    import os
    import shutil
    import signal
    import tempfile

    own_uploads = None
    if not os.environ.get("GRADIO_TEMP_DIR"):
        own_uploads = tempfile.mkdtemp(prefix="retarget-app-files-")
        os.environ["GRADIO_TEMP_DIR"] = own_uploads
    try:
        demo, service = create_app(models, base_model, device, dtype)  # one line without the extra

        def stop(signum, frame):  # a plain kill: leave through the finally below, which removes the job folders
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            demo.launch(**launch_options(host, port, share))
        finally:
            signal.signal(signal.SIGTERM, previous)
            service.close()
    finally:
        if own_uploads is not None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
            shutil.rmtree(own_uploads, ignore_errors=True)
