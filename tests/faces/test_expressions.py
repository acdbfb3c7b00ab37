import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage.transform import estimate_transform, warp

from retarget.errors import WeightsError
from retarget.faces.expressions import ExpressionExtractor, load_smirk_encoder
from retarget.faces.smirk_crop import (CANONICAL_FACE_KEYPOINTS, CANONICAL_FACE_OUTLINE, KEYPOINT_CROP_SCALE,
                                       KEYPOINT_CROP_YAW_SHIFT, keypoint_crop_transform, landmark_crop_transform)
from retarget.testing.face_models import SMIRK_PREFIX


@pytest.fixture(scope="module")
def extractor(smirk_path):
    return ExpressionExtractor(load_smirk_encoder(smirk_path, device="cpu"), batch_size=2)


def independent_smirk(checkpoint_path, crops):
    """timm backbone + pooling + the linear head, built from the file without retarget's encoder class."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    backbone = timm.create_model("tf_mobilenetv3_large_minimal_100", pretrained=False, features_only=True)
    prefix = SMIRK_PREFIX + "encoder."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.from_numpy(crops).permute(0, 3, 1, 2))[-1].mean(dim=(2, 3))
        raw = F.linear(features, state[SMIRK_PREFIX + "expression_layers.0.weight"], state[SMIRK_PREFIX + "expression_layers.0.bias"])
    raw = raw.numpy()
    return np.concatenate(
        [raw[:, :50], np.clip(raw[:, 50:52], 0, 1), np.maximum(raw[:, 52:53], 0), np.clip(raw[:, 53:55], -0.2, 0.2)], axis=1
    )


def test_outputs_match_an_independent_computation(extractor, smirk_path, group_photo, detector):
    faces = detector.detect(group_photo)
    keypoints = np.stack([face.keypoints for face in faces])
    values = extractor.extract([group_photo] * len(faces), keypoints)
    assert values.shape == (6, 55) and values.dtype == np.float32
    crops = np.stack([extractor.crop(group_photo, points) for points in keypoints])
    assert crops.shape == (6, 224, 224, 3) and crops.min() >= 0 and crops.max() <= 1
    assert np.abs(values - independent_smirk(smirk_path, crops)).max() < 1e-4
    # Published ranges; the random head is scaled so that clamps are both hit and not hit.
    assert values[:, 50:52].min() >= 0 and values[:, 50:52].max() <= 1
    assert values[:, 52].min() >= 0 and np.abs(values[:, 53:]).max() <= 0.2 + 1e-7
    assert len(np.unique(values[:, 0])) == 6  # different faces, different values
    # Batched over frames == one by one.
    single = np.concatenate([extractor.extract([group_photo], keypoints[i : i + 1]) for i in range(6)])
    assert np.abs(single - values).max() < 1e-4


def test_landmark_crop_is_the_published_recipe():
    landmarks = np.random.default_rng(0).uniform([200, 150], [330, 320], (478, 2))
    transform = landmark_crop_transform(landmarks)
    left, top = landmarks.min(0)
    right, bottom = landmarks.max(0)
    size = int((right - left + bottom - top) / 2 * 1.4)
    center = np.array([(left + right) / 2, (top + bottom) / 2])
    source = np.array([center - size / 2, [center[0] - size / 2, center[1] + size / 2], [center[0] + size / 2, center[1] - size / 2]])
    reference = estimate_transform("similarity", source, np.array([[0, 0], [0, 223], [223, 0]]))
    assert np.allclose(transform.matrix, reference.params[:2], atol=1e-9)
    image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = warp(image, reference.inverse, output_shape=(224, 224), preserve_range=True).astype(np.uint8)
    ours = np.floor(transform.warp(image, dtype=np.float32))
    assert np.mean(np.abs(ours - expected) <= 1) > 0.99


def test_keypoint_crop_of_the_canonical_face_is_the_shrunk_canonical_box():
    scale, shift = 12.0, np.array([300.0, 250.0])
    keypoints = CANONICAL_FACE_KEYPOINTS * scale + shift
    from_keypoints = keypoint_crop_transform(keypoints)
    # Bounding box of the canonical face placed the same way (x +-7.743, y -8.262 .. 9.403 model units), shrunk by
    # KEYPOINT_CROP_SCALE about its centre; a frontal nose gives no sideways shift.
    box = np.array([[-7.743, -8.262], [7.743, 9.403]])
    centre = box.mean(0)
    box = (centre + KEYPOINT_CROP_SCALE * (box - centre)) * scale + shift
    from_box = landmark_crop_transform(box)
    assert np.allclose(from_keypoints.matrix, from_box.matrix, atol=1e-3)


def test_keypoint_crop_shifts_against_the_noses_sideways_offset():
    # A head turned to the image right: the nose is 1 model unit right of the canonical nose. Reference
    # computation with scikit-image's similarity fit.
    scale, shift, nose_offset = 10.0, np.array([200.0, 150.0]), 1.0
    model = CANONICAL_FACE_KEYPOINTS.copy()
    model[2, 0] += nose_offset
    keypoints = model * scale + shift
    fit = estimate_transform("similarity", CANONICAL_FACE_KEYPOINTS, keypoints).params
    nose = np.linalg.solve(fit[:2, :2], keypoints[2] - fit[:2, 2])
    outline = CANONICAL_FACE_OUTLINE.copy()
    centre = (outline.min(0) + outline.max(0)) / 2
    outline = centre + KEYPOINT_CROP_SCALE * (outline - centre)
    outline[:, 0] += KEYPOINT_CROP_YAW_SHIFT * (nose[0] - CANONICAL_FACE_KEYPOINTS[2, 0])
    outline = outline @ fit[:2, :2].T + fit[:2, 2]
    expected = landmark_crop_transform(outline)
    assert np.allclose(keypoint_crop_transform(keypoints).matrix, expected.matrix, atol=1e-6)
    frontal = keypoint_crop_transform(CANONICAL_FACE_KEYPOINTS * scale + shift)
    centre_x = lambda t: t.to_frame(np.array([[111.5, 111.5]]))[0, 0]  # noqa: E731
    assert centre_x(keypoint_crop_transform(keypoints)) < centre_x(frontal) - 10  # moved left, by ~1.84 * 0.8 * 10 px


# MediaPipe FaceLandmarker's landmark boxes (left, top, right, bottom pixels) of the bundled real photos, recorded
# with mediapipe 1.2.3 and the published face_landmarker.task (python -m eval.smirk_crop_fit).
MEDIAPIPE_BOXES = {"astronaut": (180.7, 71.8, 270.2, 177.4), "hanks": (0.7, 21.1, 84.3, 115.0)}


@pytest.mark.parametrize("photo", sorted(MEDIAPIPE_BOXES))
def test_keypoint_crop_is_near_the_published_crop_on_real_photos(photo, request, detector):
    image = request.getfixturevalue(photo)
    keypoints = detector.detect(image)[0].keypoints
    published = landmark_crop_transform(np.array(MEDIAPIPE_BOXES[photo]).reshape(2, 2))
    ours = keypoint_crop_transform(keypoints)
    side = lambda t: 223.0 / t.scale  # noqa: E731  (crop side in frame pixels)
    centre = lambda t: t.to_frame(np.array([[111.5, 111.5]]))[0]  # noqa: E731
    assert abs(side(ours) / side(published) - 1) < 0.04
    assert np.linalg.norm(centre(ours) - centre(published)) / side(published) < 0.04


def test_keypoint_crop_frames_a_real_face(astronaut_face):
    transform = keypoint_crop_transform(astronaut_face.keypoints)
    eyes = transform.to_crop(astronaut_face.keypoints[:2])
    mouth = transform.to_crop(astronaut_face.keypoints[3:])
    assert 60 < eyes[:, 1].mean() < 110 and 120 < mouth[:, 1].mean() < 170
    assert abs(eyes[:, 0].mean() - 112) < 10


def test_checkpoint_errors_name_the_file(tmp_path, smirk_path):
    with pytest.raises(WeightsError, match="SMIRK_em1.pt"):
        load_smirk_encoder(tmp_path / "SMIRK_em1.pt")
    state = torch.load(smirk_path, weights_only=True)
    broken = dict(state)
    del broken[SMIRK_PREFIX + "expression_layers.0.bias"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing.pt.*1 missing.*expression_layers.0.bias"):
        load_smirk_encoder(tmp_path / "missing.pt")
    wrong = dict(state)
    wrong[SMIRK_PREFIX + "expression_layers.0.weight"] = torch.zeros(50, 960)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match=r"wrong shapes.*\(50, 960\) vs \(55, 960\)"):
        load_smirk_encoder(tmp_path / "wrong.pt")
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match="no keys under"):
        load_smirk_encoder(tmp_path / "empty.pt")
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_smirk_encoder(tmp_path / "garbage.pt")
