"""Video input and output: probing, streaming decode, encoding with exact rate and audio, resumable
rendering, side-by-side comparisons."""

from retarget.video.atomic import atomic_output
from retarget.video.audio import AudioMuxer, AudioSource
from retarget.video.compose import resize_to_height, side_by_side, side_by_side_chunk
from retarget.video.encoding import EncoderSettings, encoded_size, fit_frame
from retarget.video.orientation import Orientation, orientation_from_display_matrix
from retarget.video.probe import AudioInfo, VideoInfo, probe_video
from retarget.video.reader import FrameChunk, VideoReader
from retarget.video.resume import ChunkedRender, ChunkSpan, file_identity
from retarget.video.writer import VideoWriter

__all__ = [
    "AudioInfo", "AudioMuxer", "AudioSource", "ChunkSpan", "ChunkedRender", "EncoderSettings", "FrameChunk",
    "Orientation", "VideoInfo", "VideoReader", "VideoWriter", "atomic_output", "encoded_size", "file_identity",
    "fit_frame", "orientation_from_display_matrix", "probe_video", "resize_to_height", "side_by_side",
    "side_by_side_chunk",
]
