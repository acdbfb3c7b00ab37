"""Fixtures for the web app tests: the command line's tiny weights and clips, and a served app on a free port."""

from __future__ import annotations

import socket

import pytest

from tests.cli.conftest import media  # noqa: F401  (shared fixture; cli_models is in tests/conftest.py)

FAST = {"steps": 2, "guidance": 1.0}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def served_app(cli_models):  # noqa: F811
    """``(url, service, blocks)``: the app on the tiny model (CPU), served on 127.0.0.1 for the whole session."""
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from retarget.app import create_app, launch_options

    models, base = cli_models
    demo, service = create_app(models, str(base), device="cpu")
    port = free_port()
    demo.launch(**launch_options(port=port), prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", service, demo
    finally:
        demo.close()
        service.close()


@pytest.fixture(scope="session")
def client(served_app):
    pytest.importorskip("gradio_client", reason="gradio_client is not installed")
    from gradio_client import Client

    return Client(served_app[0], verbose=False, download_files=False)
