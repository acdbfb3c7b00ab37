"""Orchestration of the command-line jobs: one module per command, plus the shared per-frame plumbing.

``options`` holds the common settings; ``frames`` the face and expression plumbing used per frame; ``chunks``
the resumable chunked render; ``run``, ``edit``, ``extract``, ``batch`` and ``weights`` one job each.
"""
