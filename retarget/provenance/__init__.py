"""Provenance of rendered videos: every output says it is synthetic, in its container metadata
(:mod:`~retarget.provenance.metadata`) and in an invisible watermark in its frames
(:mod:`~retarget.provenance.watermark`); :mod:`~retarget.provenance.verify` reads both back."""

from retarget.provenance.metadata import container_tags, models_fingerprint, provenance_record, read_provenance
from retarget.provenance.verify import format_report, verify_file
from retarget.provenance.watermark import detect, embed, embed_frames

__all__ = ["container_tags", "detect", "embed", "embed_frames", "format_report", "models_fingerprint",
           "provenance_record", "read_provenance", "verify_file"]
