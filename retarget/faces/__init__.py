"""Faces: detection, alignment, identity, expressions, tracking and paste-back.

Conventions: images are RGB uint8 numpy arrays [H, W, 3]; keypoints are float32 [5, 2] pixel coordinates
(x right, y down, pixel centres at integers) in insightface order: image-left eye, image-right eye, nose tip,
image-left mouth corner, image-right mouth corner.

Typical use, models loaded once per run::

    models = FaceModels("models")                             # each model loads on first use
    faces = models.detect(frame)                              # largest first (SCRFD if present, else MTCNN)
    crop, transform = models.align_ffhq(frame, faces[0].keypoints, 512)
    identity = models.photo_identity("person.jpg")            # float32 [512], unit norm (ArcFace)
    flame = models.expressions.extract(frames, keypoints)     # float32 [N, 55] (SMIRK)
    frame = paste_back(frame, generated_crop, transform, color_match=True)

Errors: unreadable images raise :class:`~retarget.errors.InputError`, photos without a face
:class:`~retarget.errors.NoFaceError`, missing or malformed model files :class:`~retarget.errors.WeightsError`;
each message names the file.
"""

from .alignment import ARCFACE_TEMPLATE_112, AlignTransform, arcface_transform, estimate_similarity, ffhq_transform
from .detection import Detector, Face, load_detector
from .expressions import ExpressionExtractor, SmirkExpressionEncoder, load_smirk_encoder
from .identity import ArcFaceEncoder, robust_mean_embedding
from .image_io import load_image, to_rgb_uint8
from .models import FaceModels
from .pasteback import face_mask, match_color, paste_back
from .smirk_crop import keypoint_crop_transform, landmark_crop_transform
from .tracking import FaceTrack, FaceTracker, fill_keypoint_gaps, select_face

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "AlignTransform",
    "ArcFaceEncoder",
    "Detector",
    "ExpressionExtractor",
    "Face",
    "FaceModels",
    "FaceTrack",
    "FaceTracker",
    "SmirkExpressionEncoder",
    "arcface_transform",
    "estimate_similarity",
    "face_mask",
    "ffhq_transform",
    "fill_keypoint_gaps",
    "keypoint_crop_transform",
    "landmark_crop_transform",
    "load_detector",
    "load_image",
    "load_smirk_encoder",
    "match_color",
    "paste_back",
    "robust_mean_embedding",
    "select_face",
    "to_rgb_uint8",
]
