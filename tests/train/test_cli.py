"""The training commands' error contract: one line on stderr and exit status 2 for mistakes the user can fix."""

import pytest

from train import expression_adapter, reference_adapter

from .conftest import common_args


@pytest.mark.parametrize("change, message", [
    ({"data": "missing"}, "not an annotated data folder"),
    ({"resolution": "64"}, "--resolution 64 does not match the model, which works at 32 px"),
    ({"batch_size": "7"}, "fewer than one step needs"),
    ({"resume": "nowhere"}, "--resume nowhere: not a checkpoint folder"),
    ({"mixed_precision": "fp16"}, "--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no"),
    ({"output": "a_file"}, "a_file is a file, not a folder"),
])
def test_user_errors_are_one_line(change, message, tiny_checkpoint, data_folder, tmp_path, capsys):
    argv = common_args(tiny_checkpoint, data_folder, tmp_path / "out", 1)
    (tmp_path / "a_file").write_text("not a folder")
    for key, value in change.items():
        flag = f"--{key.replace('_', '-')}"
        if flag in argv:
            argv[argv.index(flag) + 1] = value if key not in ("data", "output") else str(tmp_path / value)
        else:
            argv += [flag, value]
    assert expression_adapter.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_expression_adapter_is_a_weights_error(tiny_checkpoint, data_folder, tmp_path, capsys):
    argv = common_args(tiny_checkpoint, data_folder, tmp_path / "out", 1, rank=4, exp_adapter=tmp_path / "none.bin")
    assert reference_adapter.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing expression adapter" in err[0]


def test_debug_shows_the_traceback(tiny_checkpoint, tmp_path):
    from retarget.errors import InputError

    argv = common_args(tiny_checkpoint, tmp_path / "missing", tmp_path / "out", 1) + ["--debug"]
    with pytest.raises(InputError):
        expression_adapter.main(argv)


def test_tensorboard_is_optional(tiny_checkpoint, data_folder, tmp_path, capsys):
    import importlib.util

    argv = common_args(tiny_checkpoint, data_folder, tmp_path / "out", 1) + ["--report-to", "tensorboard"]
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    assert expression_adapter.main(argv) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
