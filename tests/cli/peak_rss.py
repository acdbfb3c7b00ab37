"""Run as a script: ``python -m tests.cli.peak_rss RETARGET-ARGS...`` runs the ``retarget`` command line in this
fresh process and prints its exit status and peak resident memory in KiB (``status peak_kib``) as the last line."""

import resource
import sys


def main(argv: list[str]) -> None:
    from retarget.cli import main as retarget_main

    status = retarget_main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(status, peak)


if __name__ == "__main__":
    main(sys.argv[1:])
