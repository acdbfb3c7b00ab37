"""Each launched process renders on its own GPU: the device resolution and what torch and onnxruntime are given.

CUDA is faked (torch.cuda availability and device count, onnxruntime's provider list), so this runs on the CPU:
the models are then opened on the CPU while the devices they were asked for are recorded.
"""

from __future__ import annotations

from types import SimpleNamespace

import onnxruntime
import pytest
import torch

from retarget.devices import (LARGE_BATCH_SIZE, LOCAL_RANK_VARIABLES, SMALL_BATCH_SIZE, default_batch_size,
                              resolve_device)
from retarget.errors import InputError
from retarget.faces import expressions as expressions_module
from retarget.faces.onnx_session import execution_providers
from retarget.jobs.options import JobOptions
from retarget.jobs.session import RenderSession

#: What a stubbed ``ExpressionPipeline.from_pretrained`` returns: the session reads only its load profile.
STAND_IN = SimpleNamespace(load_seconds={})

LAUNCHER_VARIABLES = LOCAL_RANK_VARIABLES + ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")


class FakeGpus:
    """``set(n, memory_gib)``: torch sees ``n`` GPUs (0 = none) of that much memory. ``current_calls``: the
    torch.cuda.set_device calls; ``properties_calls``: the devices whose properties were read."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.current_calls = []
        monkeypatch.setattr(torch.cuda, "set_device", self.current_calls.append)

    def set(self, count: int, memory_gib: float = 80.0) -> None:
        self.monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        self.monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        self.properties_calls = []

        def properties(index):
            self.properties_calls.append(index)
            return SimpleNamespace(total_memory=int(memory_gib * 2**30))

        self.monkeypatch.setattr(torch.cuda, "get_device_properties", properties)


@pytest.fixture
def gpus(monkeypatch):
    """Four fake GPUs for torch, onnxruntime with its CUDA provider, and no launcher variables set."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    fake = FakeGpus(monkeypatch)
    fake.set(4)
    return fake


def test_resolution_order(gpus, monkeypatch):
    assert resolve_device(None) == "cuda:0"  # no launcher: the first GPU
    monkeypatch.setenv("LOCAL_RANK", "2")  # torchrun / accelerate launch, process 2 of this machine
    assert resolve_device(None) == "cuda:2"
    assert resolve_device("cuda") == "cuda:2"  # "cuda" = this process's GPU
    assert resolve_device("cuda:3") == "cuda:3"  # an explicit device wins
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "5")  # more processes than GPUs: wrap around
    assert resolve_device(None) == "cuda:1"
    gpus.set(1)  # a launcher that gives each process one visible GPU
    assert resolve_device(None) == "cuda:0"
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")  # MPI
    gpus.set(4)
    assert resolve_device(None) == "cuda:3"
    gpus.set(0)
    assert resolve_device(None) == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("device, message", [("gpu", "cpu, cuda or cuda:N"), ("cuda:4", "only 4 CUDA device")])
def test_bad_device_is_one_clear_error(gpus, device, message):
    with pytest.raises(InputError, match=message):
        resolve_device(device)


def test_onnxruntime_provider_gets_the_launcher_gpu(gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    cuda = [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]
    assert execution_providers(None) == cuda
    assert execution_providers("cuda") == cuda
    assert execution_providers(resolve_device(None)) == cuda
    assert execution_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    gpus.set(0)  # torch without CUDA next to onnxruntime with it: onnxruntime's first GPU, as before
    monkeypatch.delenv("LOCAL_RANK")
    assert execution_providers(None)[0] == ("CUDAExecutionProvider", {"device_id": 0})


def test_session_puts_pipeline_smirk_and_onnx_models_on_the_process_gpu(gpus, cli_models, monkeypatch):
    """Under ``accelerate launch`` (LOCAL_RANK=1 of 2 GPUs), every model of a job is opened on cuda:1."""
    models, base = cli_models
    gpus.set(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    onnx_providers = []
    real_session = onnxruntime.InferenceSession

    def recording_session(path, sess_options=None, providers=None):
        onnx_providers.append(providers)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)

    smirk_devices = []
    real_smirk = expressions_module.load_smirk_encoder

    def recording_smirk(path, device=None):
        smirk_devices.append(device)
        return real_smirk(path, device="cpu")

    monkeypatch.setattr(expressions_module, "load_smirk_encoder", recording_smirk)

    pipeline_calls = []
    from retarget.pipeline import ExpressionPipeline

    def recording_pipeline(models_dir, base_model=None, device=None, dtype=None, check=None):
        pipeline_calls.append(device)
        return STAND_IN

    monkeypatch.setattr(ExpressionPipeline, "from_pretrained", staticmethod(recording_pipeline))

    session = RenderSession(JobOptions(models=models, base_model=str(base), progress=False)).load()
    assert session.device == "cuda:1" and gpus.current_calls == [1]
    assert pipeline_calls == ["cuda:1"] and session.pipeline is STAND_IN
    assert smirk_devices == ["cuda:1"]
    # detector (three MTCNN stages, or SCRFD) and ArcFace, each asked for the CUDA provider on device 1
    assert len(onnx_providers) >= 2
    assert all(p == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"] for p in onnx_providers)

    # an explicit --device wins over the launcher
    onnx_providers.clear()
    explicit = RenderSession(JobOptions(models=models, base_model=str(base), device="cuda:0", progress=False))
    explicit.faces.identity
    assert explicit.device == "cuda:0" and onnx_providers == [[("CUDAExecutionProvider", {"device_id": 0}),
                                                                "CPUExecutionProvider"]]


def test_background_pipeline_load_runs_on_the_process_gpu(gpus, cli_models, monkeypatch):
    """The pipeline loaded on its own thread (overlapped with the face scan) is put on the launcher's GPU, and that
    thread makes the GPU current too (the current CUDA device is per thread)."""
    import threading

    models, base = cli_models
    gpus.set(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    calls = []
    from retarget.pipeline import ExpressionPipeline

    def recording_pipeline(models_dir, base_model=None, device=None, dtype=None, check=None):
        calls.append((device, threading.current_thread().name))
        return STAND_IN

    monkeypatch.setattr(ExpressionPipeline, "from_pretrained", staticmethod(recording_pipeline))
    threads = []
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda index: threads.append((index, threading.current_thread().name)))
    session = RenderSession(JobOptions(models=models, base_model=str(base), progress=False, device=None))
    session.load(expressions=False, background=True)
    assert session.pipeline is STAND_IN
    assert calls == [("cuda:1", "retarget-load")]
    assert (1, "retarget-load") in threads and (1, threading.current_thread().name) in threads


def test_default_batch_size_follows_the_device_and_its_memory(gpus, monkeypatch):
    """No ``--batch-size``: 16 on a GPU of at least 12 GiB (the process's own GPU under a launcher), else 8;
    a batch size given is kept."""
    assert default_batch_size("cpu") == SMALL_BATCH_SIZE == 8
    assert default_batch_size("cuda:1") == LARGE_BATCH_SIZE == 16
    assert gpus.properties_calls == [1]
    assert JobOptions(device="cpu").batch_size == 8
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert JobOptions().batch_size == 16 and gpus.properties_calls[-1] == 3
    assert JobOptions(batch_size=5).batch_size == 5
    gpus.set(1, memory_gib=11.9)
    assert JobOptions().batch_size == 8
    gpus.set(1, memory_gib=12.0)
    assert JobOptions(device="cuda").batch_size == 16
    gpus.set(0)
    assert JobOptions().batch_size == 8


@pytest.mark.parametrize("capability, hip, expected", [
    ((9, 0), None, torch.bfloat16),   # Hopper
    ((8, 6), None, torch.bfloat16),   # Ampere
    ((7, 5), None, torch.float16),    # Turing (T4): bf16 only emulated
    ((7, 0), None, torch.float16),    # Volta (V100)
    ((9, 4), "6.2", torch.bfloat16),  # ROCm: torch's own answer (True here)
])
def test_default_dtype_is_bf16_only_where_the_gpu_computes_in_it(gpus, monkeypatch, capability, hip, expected):
    from retarget.pipeline import default_device_dtype

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # as torch says
    monkeypatch.setattr(torch.version, "hip", hip)
    assert default_device_dtype("cuda:2") == (torch.device("cuda:2"), expected)
    assert asked == ([] if hip else [torch.device("cuda:2")])  # the card asked about is the job's
    assert default_device_dtype("cuda:2", "fp32")[1] == torch.float32  # an explicit dtype wins
    assert default_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
