"""retarget: put one person's facial performance onto another face in video, with diffusion.

The heavy modules are imported lazily so that ``retarget --help`` and the face/video tools start fast.
"""

__version__ = "0.1.0"

__all__ = ["ExpressionPipeline", "ExpressionPipelineOutput", "RetargetError", "__version__"]

from .errors import RetargetError


def __getattr__(name):
    if name in ("ExpressionPipeline", "ExpressionPipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'retarget' has no attribute {name!r}")
