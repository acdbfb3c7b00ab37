"""`retarget weights download` against a fake hub: every file lands in the layout, downloaded files are checked
with their loaders, and a file the hub does not have gives its manual step."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from retarget.cli import main
from retarget.faces.expressions import load_smirk_encoder
from retarget.jobs import weights as weights_module
from retarget.testing.face_models import write_random_arcface_onnx, write_random_scrfd_onnx, write_random_smirk


def write_landmarker(path: Path) -> Path:
    """A zip with the members of a MediaPipe face_landmarker.task bundle (contents are not read here)."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name in ("face_detector.tflite", "face_landmarks_detector.tflite", "face_blendshapes.tflite"):
            bundle.writestr(name, b"tflite")
    return path


def write_small_smirk(path: Path) -> Path:
    """A SMIRK file whose head is Linear(960, 10) instead of (960, 55): right keys, one wrong shape."""
    write_random_smirk(path, seed=1)
    state = torch.load(path, weights_only=True)
    prefix = "smirk_encoder.expression_encoder.expression_layers.0."
    state[prefix + "weight"], state[prefix + "bias"] = torch.zeros(10, 960), torch.zeros(10)
    torch.save(state, path)
    return path


def write_safetensors(path: Path) -> Path:
    """A one-tensor safetensors file: the format of the diffusion files (doctor reads their headers)."""
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(path))
    return path


def write_torch_file(path: Path) -> Path:
    """A one-tensor torch zip archive: the format of the pickled diffusion files."""
    torch.save({"weight": torch.zeros(2)}, path)
    return path


WRITERS = {
    "config.json": lambda path: path.write_text("{}"),
    "diffusion_pytorch_model.safetensors": write_safetensors,
    "pytorch_lora_weights.safetensors": write_safetensors,
    "pytorch_model.bin": write_torch_file,
    "exp_adapter.bin": write_torch_file,
    "arcface.onnx": write_random_arcface_onnx,
    "scrfd_10g_bnkps.onnx": write_random_scrfd_onnx,
    "SMIRK_em1.pt": write_random_smirk,
    "face_landmarker.task": write_landmarker,
}


class FakeHub:
    """Repositories as ``{repo: {filename: writer}}``; installs itself as huggingface_hub's listing and download."""

    def __init__(self, monkeypatch, repos):
        import huggingface_hub

        self.repos, self.fetched, hub = repos, [], self

        class Api:
            def list_repo_files(self, repo_id):
                return list(hub.repos[repo_id])

        def download(repo_id, filename, local_dir):
            self.fetched.append((repo_id, filename))
            path = Path(local_dir) / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.repos[repo_id][filename](path)
            return str(path)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def published_repos():
    """The hub as published: each file of WEIGHT_FILES at its repository path, written in its real format, plus
    other files those repositories hold."""
    repos = {}
    for item in weights_module.WEIGHT_FILES:
        writer = WRITERS.get(Path(item.hub_filename).name, lambda path: path.write_bytes(b"weights"))
        repos.setdefault(item.hub_repo, {})[item.hub_filename] = writer
    repos["Skywork/SkyReels-A1"]["extra_models/smirk/l_eyelid.npy"] = lambda path: path.write_bytes(b"npy")
    repos["Skywork/SkyReels-A1"]["SkyReels-A1-5B/transformer/config.json"] = lambda path: path.write_bytes(b"{}")
    return repos


def test_download_fetches_every_file_into_the_layout(tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, published_repos())
    models = tmp_path / "models"
    assert main(["weights", "download", "--models", str(models), "--skip-base-model"]) == 0
    assert sorted(hub.fetched) == sorted((w.hub_repo, w.hub_filename) for w in weights_module.WEIGHT_FILES)
    assert len(hub.fetched) == 10
    assert ("Skywork/SkyReels-A1", "extra_models/smirk/SMIRK_em1.pt") in hub.fetched
    assert ("Skywork/SkyReels-A1", "extra_models/mediapipe/face_landmarker.task") in hub.fetched
    assert ("DIAMONIK7777/antelopev2", "scrfd_10g_bnkps.onnx") in hub.fetched
    files = sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file())
    assert files == sorted(w.path for w in weights_module.WEIGHT_FILES)  # no staging folder or hub paths left
    encoder = load_smirk_encoder(models / "smirk" / "SMIRK_em1.pt", device="cpu")
    assert encoder.expression_layers[0].weight.shape == (55, 960)
    assert "get them by hand" not in capsys.readouterr().out
    assert main(["doctor", "--models", str(models)]) in (0, 1)
    report = capsys.readouterr().out
    assert all(f"[ok  ] {w.path}:" in report for w in weights_module.WEIGHT_FILES), report
    # a second run finds everything in place and fetches nothing
    hub.fetched.clear()
    assert main(["weights", "download", "--models", str(models), "--skip-base-model"]) == 0
    assert hub.fetched == [] and capsys.readouterr().out.count("already in place") == 10


def test_wrong_shaped_smirk_download_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    repos = published_repos()
    repos["Skywork/SkyReels-A1"]["extra_models/smirk/SMIRK_em1.pt"] = write_small_smirk
    FakeHub(monkeypatch, repos)
    models = tmp_path / "models"
    assert main(["weights", "download", "--models", str(models), "--skip-base-model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retarget: error: smirk/SMIRK_em1.pt: "), err
    assert "Skywork/SkyReels-A1" in err[0]
    assert "2 with wrong shapes (e.g. expression_layers.0.bias: (10,) vs (55,))" in err[0]
    assert not (models / "smirk" / "SMIRK_em1.pt").exists()
    assert not list((models / weights_module.STAGING_FOLDER).rglob("SMIRK_em1.pt"))  # the bad copy is deleted


def test_missing_hub_file_gives_its_manual_step_and_the_repo_listing(tmp_path, monkeypatch, capsys):
    repos = published_repos()
    del repos["Skywork/SkyReels-A1"]["extra_models/smirk/SMIRK_em1.pt"]
    del repos["Skywork/SkyReels-A1"]["extra_models/mediapipe/face_landmarker.task"]
    hub = FakeHub(monkeypatch, repos)
    models = tmp_path / "models"
    assert main(["weights", "download", "--models", str(models), "--skip-base-model"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "could not download smirk/SMIRK_em1.pt:" in err[0], err
    assert "Skywork/SkyReels-A1 has no extra_models/smirk/SMIRK_em1.pt" in err[0]
    assert "face_landmarker" not in err[0]  # optional: reported, not fatal
    out = captured.out
    assert "gdown --id 1T65uEd9dVLHgVw5KiUYL66NUee-MCzoE" in out and str(models / "smirk") in out
    assert "storage.googleapis.com/mediapipe-models" in out
    # every other file was still fetched
    assert len(hub.fetched) == 8 and (models / "antelopev2" / "scrfd_10g_bnkps.onnx").is_file()


def test_moved_file_is_found_by_name_and_listing_names_the_candidates():
    item = next(w for w in weights_module.WEIGHT_FILES if w.path == "smirk/SMIRK_em1.pt")
    assert weights_module._hub_name(item, ["README.md", "models/smirk/SMIRK_em1.pt"]) == "models/smirk/SMIRK_em1.pt"
    with pytest.raises(weights_module._Unavailable) as caught:
        weights_module._hub_name(item, ["README.md", "a/SMIRK_em2.pt", "b/flame.pt"])
    assert str(caught.value) == ("Skywork/SkyReels-A1 has no extra_models/smirk/SMIRK_em1.pt "
                                 "(it has a/SMIRK_em2.pt, b/flame.pt)")


class TransportError(Exception):
    """Named like the transport errors of httpx and its successors (a failure before any answer from the hub)."""


class ConnectError(TransportError):
    pass


@pytest.mark.parametrize("error", [ConnectionError("Failed to resolve 'huggingface.co'\nmore detail"),
                                   ConnectError("[Errno -2] Name or service not known")])
def test_unreachable_hub_is_one_line_and_tried_once(error, tmp_path, monkeypatch, capsys):
    """Without a network the first listing fails after the client's own retries; the other repositories are not
    tried (each would wait through the same retries), and the error line names the first file and the count."""
    import huggingface_hub

    tried = []

    class Offline:
        def list_repo_files(self, repo_id):
            tried.append(repo_id)
            raise error

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert main(["weights", "download", "--models", str(tmp_path / "models"), "--skip-base-model"]) == 1
    captured = capsys.readouterr()
    assert tried == ["FoivosPar/Arc2Face"]
    err = captured.err.strip().splitlines()
    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    assert err == [f"retarget: error: could not download arc2face/config.json and 7 other required file(s): cannot "
                   f"list FoivosPar/Arc2Face ({reason}) (the files and their manual steps are listed above)"]
    assert f"  not downloaded: the model hub cannot be reached ({reason})" in captured.out.splitlines()
    assert not (tmp_path / "models").exists()  # nothing fetched: no empty folder left behind
    kept = tmp_path / "mine"
    kept.mkdir()
    assert main(["weights", "download", "--models", str(kept), "--skip-base-model"]) == 1
    assert kept.is_dir() and not any(kept.iterdir())  # a folder the user made stays


def test_an_answer_from_the_hub_does_not_stop_the_other_repositories(tmp_path, monkeypatch, capsys):
    """A repository the hub refuses (unknown, gated) is that repository's failure only: the others are fetched."""
    import huggingface_hub

    repos = published_repos()
    FakeHub(monkeypatch, repos)
    listing = huggingface_hub.HfApi.list_repo_files

    def refuse_arc2face(self, repo_id):
        if repo_id == "FoivosPar/Arc2Face":
            raise PermissionError("401 Client Error: access to FoivosPar/Arc2Face is restricted")
        return listing(self, repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse_arc2face)
    assert main(["weights", "download", "--models", str(tmp_path / "models"), "--skip-base-model"]) == 1
    assert (tmp_path / "models" / "smirk" / "SMIRK_em1.pt").is_file()
    assert (tmp_path / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx").is_file()
    assert not (tmp_path / "models" / "arc2face").exists()


def test_offline_every_file_gets_its_hub_address_and_place_by_hand(tmp_path, monkeypatch, capsys):
    """Without a network every file is listed with a manual step: its file on the hub and where to save it in the
    models folder (the Arc2Face files have no other source; the others add theirs); doctor says the same."""
    import huggingface_hub
    from huggingface_hub import constants

    class Offline:
        def list_repo_files(self, repo_id):
            raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    models = tmp_path / "models"
    assert main(["weights", "download", "--models", str(models), "--skip-base-model"]) == 1
    out = capsys.readouterr().out.splitlines()
    steps = out[out.index("files that could not be downloaded (get them by hand):") + 1:]
    assert len(steps) == len(weights_module.WEIGHT_FILES) == 10
    for item, line in zip(weights_module.WEIGHT_FILES, steps):
        step = (f"download {constants.ENDPOINT}/{item.hub_repo}/resolve/main/{item.hub_filename} and save it as "
                f"{models / item.path}")
        assert line == f"  {item.path}: {step}" + (f"; or {item.manual.format(models=models)}" if item.manual else "")
    assert steps[0] == (f"  arc2face/config.json: download {constants.ENDPOINT}/FoivosPar/Arc2Face/resolve/main/"
                        f"arc2face/config.json and save it as {models / 'arc2face' / 'config.json'}")
    assert steps[6] == (f"  antelopev2/arcface.onnx: download {constants.ENDPOINT}/FoivosPar/Arc2Face/resolve/main/"
                        f"arcface.onnx and save it as {models / 'antelopev2' / 'arcface.onnx'}")
    assert "cannot list" not in "\n".join(steps)  # the reason is said above, with each file; here only what to do
    assert not models.exists()  # nothing half-fetched, and no empty folder made by the download left behind
    models.mkdir()
    checks = {check.name: check for check in weights_module.weight_checks(models, None)}
    assert checks["arc2face/config.json"].ok is False
    assert checks["arc2face/config.json"].detail == "missing; run `retarget weights download` or " + (
        f"download {constants.ENDPOINT}/FoivosPar/Arc2Face/resolve/main/arc2face/config.json and save it as "
        f"{models / 'arc2face' / 'config.json'}")
