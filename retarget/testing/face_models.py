"""Random-weight face models in the published file formats, for tests.

* :func:`write_random_arcface_onnx` -> ``antelopev2/arcface.onnx`` signature: input ``[N, 3, 112, 112]`` float32,
  output ``[N, 512]`` float32.
* :func:`write_random_scrfd_onnx` -> ``antelopev2/scrfd_10g_bnkps.onnx`` signature: input ``[1, 3, H, W]``, nine
  outputs (scores ``[L, 1]``, box distances ``[L, 4]``, keypoint distances ``[L, 10]`` for strides 8, 16, 32,
  two anchors per location).
* :func:`write_random_smirk` -> ``smirk/SMIRK_em1.pt``: a flat dict of tensors saved with ``torch.save``, the
  expression encoder under ``smirk_encoder.expression_encoder.`` with timm ``tf_mobilenetv3_large_minimal_100``
  (``features_only=True``) backbone keys (``encoder.*``) and the head ``expression_layers.0.{weight,bias}``
  ``[55, 960]`` / ``[55]``, plus a few tensors of the file's other sub-models that loaders must ignore.
* :func:`write_random_face_models` lays all three out as in a published ``models/`` folder.

The weights are random (deterministic for a seed): outputs have the real shapes and ranges, not meaning.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "SMIRK_PREFIX",
    "write_random_arcface_onnx",
    "write_random_face_models",
    "write_random_scrfd_onnx",
    "write_random_smirk",
]

SMIRK_PREFIX = "smirk_encoder.expression_encoder."
_OPSET = 17
_IR_VERSION = 8


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _save(model, path: str | os.PathLike) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_random_arcface_onnx(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny recognition model with ArcFace's signature: ``input.1`` [N, 3, 112, 112] -> ``embedding`` [N, 512].

    Graph: Conv(3->8, kernel 8, stride 8) -> ReLU -> Flatten -> Gemm(1568 -> 512). Returns the path written.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    initializers = [
        _tensor("conv_w", rng.normal(0, 0.1, (8, 3, 8, 8))),
        _tensor("conv_b", rng.normal(0, 0.1, (8,))),
        _tensor("fc_w", rng.normal(0, 0.05, (8 * 14 * 14, 512))),
        _tensor("fc_b", rng.normal(0, 0.05, (512,))),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["conv"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "random_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    return _save(model, path)


def write_random_scrfd_onnx(path: str | os.PathLike, seed: int = 0, score_bias: float = 0.0,
                            dynamic_batch: bool = False) -> Path:
    """Write a tiny detector with SCRFD ``*_bnkps``'s signature (input ``input.1`` [1, 3, H, W], nine outputs
    ``[L, C]``; with ``dynamic_batch`` input ``[N, 3, H, W]`` and outputs ``[N, L, C]``, as batch-enabled exports).

    Each stride s in (8, 16, 32) has one s x s / stride-s convolution per head; scores pass through a sigmoid
    (``score_bias`` shifts them; at 0 about half the anchors pass SCRFD's 0.5 threshold), box distances are
    positive (softplus). Outputs in SCRFD's order: ``score_8, score_16, score_32, bbox_8, ..., kps_32``.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    initializers, nodes = [], []
    heads = {"score": 2, "bbox": 8, "kps": 20}
    widths = {"score": 1, "bbox": 4, "kps": 10}
    outputs = {name: [] for name in heads}
    for stride in (8, 16, 32):
        for head, channels in heads.items():
            weight = rng.normal(0, 1.0 / (stride * 4), (channels, 3, stride, stride))
            bias = np.full((channels,), score_bias if head == "score" else 0.0) + rng.normal(0, 0.1, (channels,))
            initializers += [_tensor(f"{head}{stride}_w", weight), _tensor(f"{head}{stride}_b", bias)]
            initializers.append(
                helper.make_tensor(f"{head}{stride}_shape", TensorProto.INT64, [3], [0, -1, widths[head]])
                if dynamic_batch else
                helper.make_tensor(f"{head}{stride}_shape", TensorProto.INT64, [2], [-1, widths[head]])
            )
            conv = f"{head}{stride}_conv"
            nodes.append(
                helper.make_node(
                    "Conv", ["input.1", f"{head}{stride}_w", f"{head}{stride}_b"], [conv],
                    kernel_shape=[stride, stride], strides=[stride, stride],
                )
            )
            activated = f"{head}{stride}_act"
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [activated]))
            elif head == "bbox":
                nodes.append(helper.make_node("Softplus", [conv], [activated]))
            else:
                activated = conv
            nodes.append(helper.make_node("Transpose", [activated], [f"{head}{stride}_nhwc"], perm=[0, 2, 3, 1]))
            name = f"{head}_{stride}"
            nodes.append(helper.make_node("Reshape", [f"{head}{stride}_nhwc", f"{head}{stride}_shape"], [name]))
            dims = ["N", "L", widths[head]] if dynamic_batch else ["L", widths[head]]
            outputs[head].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(
        nodes,
        "random_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N" if dynamic_batch else 1, 3, "H", "W"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    return _save(model, path)


def write_random_smirk(path: str | os.PathLike, seed: int = 0, head_scale: float = 0.01) -> Path:
    """Write a ``SMIRK_em1.pt``-format file with a random expression encoder.

    The backbone is timm ``tf_mobilenetv3_large_minimal_100`` (``features_only=True``, random init for
    ``seed``) with its exact key names and shapes under ``smirk_encoder.expression_encoder.encoder.``, with random
    batch-norm statistics; the head ``expression_layers.0`` is Linear(960, 55) with weights
    N(0, (head_scale / sqrt(960))^2) and biases N(0, (head_scale / 2)^2). The default scale puts the raw outputs
    around +-1 on natural crops, so some eyelid/jaw values land inside their ranges and some are clamped.
    Extra keys of the other SMIRK sub-models (shape and pose encoders) are included and must be
    ignored by loaders. Returns the path written.
    """
    import timm
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        backbone = timm.create_model("tf_mobilenetv3_large_minimal_100", pretrained=False, features_only=True)
    finally:
        torch.random.set_rng_state(torch_state)
    state = {f"{SMIRK_PREFIX}encoder.{key}": value.clone() for key, value in backbone.state_dict().items()}
    # Random batch-norm statistics, so the running mean/var are not the identity and loading them matters.
    for key, value in list(state.items()):
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) * 0.5 + 0.75
    features = backbone.feature_info.channels()[-1]
    state[f"{SMIRK_PREFIX}expression_layers.0.weight"] = (
        torch.randn((55, features), generator=generator) * head_scale / features**0.5
    )
    state[f"{SMIRK_PREFIX}expression_layers.0.bias"] = torch.randn((55,), generator=generator) * 0.5 * head_scale
    state["smirk_encoder.shape_encoder.shape_layers.0.weight"] = torch.randn((300, 8), generator=generator)
    state["smirk_encoder.pose_encoder.pose_cam_layers.0.weight"] = torch.randn((6, 8), generator=generator)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_random_face_models(models_dir: str | os.PathLike, seed: int = 0, with_detector: bool = False) -> Path:
    """Write ``antelopev2/arcface.onnx`` and ``smirk/SMIRK_em1.pt`` (and, with ``with_detector``,
    ``antelopev2/scrfd_10g_bnkps.onnx``) under ``models_dir`` as in the published layout. Returns ``models_dir``.
    """
    models_dir = Path(models_dir)
    write_random_arcface_onnx(models_dir / "antelopev2" / "arcface.onnx", seed=seed)
    write_random_smirk(models_dir / "smirk" / "SMIRK_em1.pt", seed=seed)
    if with_detector:
        write_random_scrfd_onnx(models_dir / "antelopev2" / "scrfd_10g_bnkps.onnx", seed=seed)
    return models_dir
