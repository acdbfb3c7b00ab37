"""The staged runner: a job's work on a sequence of items (chunks of frames) in three stages that overlap.

For every item, in order: ``prepared = prepare(item)`` (e.g. decode the chunk's frames), ``result =
process(item, prepared)`` (the work on the model: rendering, SMIRK), ``finish(item, prepared, result)`` (e.g.
paste back, compose, encode and save the chunk), then ``done(item)``. With ``overlap`` (the default) ``prepare``
runs on a prefetch thread one item ahead and ``finish`` on a finish thread one item behind, while the calling
thread runs ``process``: the model is kept fed while frames are decoded and encoded. Without ``overlap`` the same
functions run one after another on the calling thread (the order of earlier versions). The results are the same
either way: each function sees the same items in the same order, and ``finish`` calls never run at once.

Memory: the hand-offs are queues of depth one, so at most :data:`CHUNKS_IN_FLIGHT` items are held at once (item
k+1 prepared, item k processed, item k-1 being finished); callers size their chunks for that many (see
:func:`retarget.jobs.common.chunk_frames`).

Errors: an exception in a worker is raised again, unchanged, on the calling thread (so a job's one-line errors
stay the same); an exception on the calling thread (including ``KeyboardInterrupt`` and the web app's cancel,
which its progress bars raise in :func:`run_stages`'s ``done`` callback or in ``process``) stops the runner:
nothing new is prepared or processed, the ``finish`` already handed over runs to its end, whether or not the finish
thread has started it (the item it saves was processed: a rendered chunk is saved whole, so a resumed job keeps
it), and the exception propagates. ``done`` runs right after the item's ``finish``, on the same thread (with
``overlap``, the finish thread: progress counts an item when it is saved, not when the next one has been
processed); an exception it raises (a cancel) reaches the calling thread at its next hand-over, as a finish's
does.

Imports run one way: the jobs (``run``, ``edit``, the face scan) use this module; it uses none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

#: Items held at once by an overlapped run: one prepared ahead, one being processed, one being finished.
CHUNKS_IN_FLIGHT = 3

_END = object()


def run_stages(items: Iterable, prepare: Callable, process: Callable, finish: Callable | None = None, *,
               done: Callable | None = None, overlap: bool = True) -> int:
    """Run ``prepare``/``process``/``finish`` over ``items`` (see the module doc); returns the number of items.

    ``items`` may be a generator (it is advanced on the prefetch thread, one item at a time, so the work of
    producing an item, e.g. decoding, overlaps too). ``finish`` and ``done`` may be None.
    """
    iterator = iter(items)

    def fetch():
        for item in iterator:
            return item, prepare(item)
        return _END

    def finished(item, prepared, result):
        if finish is not None:
            finish(item, prepared, result)

    def finished_and_done(item, prepared, result):  # the finish thread: an item counts as done once it is saved
        finished(item, prepared, result)
        if done is not None:
            done(item)

    count = 0
    if not overlap:
        while (got := fetch()) is not _END:
            item, prepared = got
            finished(item, prepared, process(item, prepared))
            if done is not None:
                done(item)
            count += 1
        return count

    prefetcher = ThreadPoolExecutor(1, thread_name_prefix="retarget-prefetch")
    finisher = ThreadPoolExecutor(1, thread_name_prefix="retarget-finish")
    ahead = prefetcher.submit(fetch)
    behind = None
    try:
        while True:
            got = ahead.result()
            if got is _END:
                break
            ahead = prefetcher.submit(fetch)
            item, prepared = got
            result = process(item, prepared)
            handed = finisher.submit(finished_and_done, item, prepared, result)  # after the previous finish
            if behind is not None:
                behind.result()  # raises the finish's error, or the error done raised (a cancel)
            behind = handed
            count += 1
        if behind is not None:
            behind.result()
        return count
    finally:
        ahead.cancel()
        prefetcher.shutdown(wait=True, cancel_futures=True)
        finisher.shutdown(wait=True)  # a finish already handed over still runs: its item's work is done
