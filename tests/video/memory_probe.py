"""Run as a script: decode CLIP in chunks and re-encode it, print the peak RSS growth in KiB (one integer)."""

import resource
import sys


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(clip: str, out: str) -> None:
    from retarget.video import AudioSource, EncoderSettings, VideoReader, VideoWriter

    reader = VideoReader(clip)
    baseline = current_rss_kib()
    with VideoWriter(out, reader.info.frame_rate, settings=EncoderSettings(preset="ultrafast"),
                     audio=AudioSource(clip)) as writer:
        for chunk in reader.iter_chunks(8):
            writer.write(chunk.frames)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak - baseline)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
