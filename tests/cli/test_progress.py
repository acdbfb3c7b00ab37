"""Progress bars in a log: whole lines, at most one per bar every LOG_INTERVAL_S, first and last state always."""

from __future__ import annotations

import io
import re

import pytest
import tqdm.auto
import tqdm.std

from retarget.cli import main
from retarget.progress import LOG_INTERVAL_S, LineWriter, LogBar, bars_for

LINE = re.compile(r"^(?P<desc>.+): +(?P<percent>\d+)% (?P<n>\d+)/(?P<total>\d+) "
                  r"\[(?P<minutes>\d+):(?P<seconds>\d+)<[0-9:?]+, +[^\]]+\]$")


class FakeClock:
    """Stands in for ``time.time`` in tqdm: each call moves ``step`` seconds on."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_line_writer_keeps_only_the_drawn_states():
    out = io.StringIO()
    writer = LineWriter(out)
    for text in ["\rfaces a.mp4:  10%", "\x1b[A", "\r      \r", "\n", "\rrender: 50%\x1b[A", "", "x\r\ny"]:
        assert writer.write(text) == len(text)
    assert out.getvalue() == "faces a.mp4:  10%\nrender: 50%\nx\ny\n"


def test_a_fast_bar_writes_its_first_and_last_state_only():
    out = io.StringIO()
    with LogBar(total=50, desc="run a.mp4", unit="frame", file=out, leave=False) as bar:
        for _ in range(50):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group("desc", "percent", "n", "total") for line in lines] == [
        ("run a.mp4", "0", "0", "50"), ("run a.mp4", "100", "50", "50")]


def test_a_slow_bar_writes_a_line_every_interval(monkeypatch):
    # Every clock reading moves on by a third of the interval (tqdm reads it more than once per update).
    monkeypatch.setattr(tqdm.std, "time", FakeClock(LOG_INTERVAL_S / 3))
    out = io.StringIO()
    bar = LogBar(total=30, desc="faces a.mp4", unit="frame", file=out, miniters=1)
    for _ in range(30):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    counts = [int(m.group("n")) for m in matches]
    elapsed = [60 * int(m.group("minutes")) + int(m.group("seconds")) for m in matches]
    assert counts[0] == 0 and counts[-1] == 30
    assert counts == sorted(set(counts))  # one line per shown state, in order
    assert len(lines) >= 6  # the states between the first and the last are shown too ...
    gaps = [later - earlier for earlier, later in zip(elapsed[:-2], elapsed[1:-1])]
    assert min(gaps) >= LOG_INTERVAL_S  # ... at most one per interval (the last line is written on closing)
    assert not any(c in out.getvalue() for c in "\r\x1b")



def test_a_state_written_by_an_update_is_not_written_again_on_closing(monkeypatch):
    """With a slow clock every update writes its state, the last one (100%) included: closing adds nothing."""
    monkeypatch.setattr(tqdm.std, "time", FakeClock(2 * LOG_INTERVAL_S))
    out = io.StringIO()
    with LogBar(total=3, desc="run a.mp4", unit="frame", file=out, miniters=1) as bar:
        for _ in range(3):
            bar.update(1)
    counts = [int(LINE.match(line).group("n")) for line in out.getvalue().splitlines()]
    assert counts == [0, 1, 2, 3]


def test_a_stopped_job_writes_its_bars_last_lines_before_its_error(monkeypatch, capsys):
    """A bar left open by an exception is closed when the command's bars end, so the error line comes last; a state
    it wrote already is not repeated."""
    import sys

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    with pytest.raises(KeyboardInterrupt), bars_for(out):
        bar = tqdm.auto.tqdm(total=10, desc="run a.mp4", unit="frame")
        bar.update(4)  # a fast update: not written until the bar closes
        raise KeyboardInterrupt
    print("retarget: interrupted", file=out)
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group("n") for line in lines[:-1]] == ["0", "4"]
    assert lines[-1] == "retarget: interrupted"
    with pytest.raises(KeyboardInterrupt), bars_for(out):
        tqdm.auto.tqdm(total=10, desc="run b.mp4", unit="frame")  # only its first state was reached
        raise KeyboardInterrupt
    assert len(out.getvalue().splitlines()) == 4  # the one new line: b's 0%, written once

def test_bars_over_batches_and_steps_are_not_shown():
    out = io.StringIO()
    for unit in ("batch", "it"):
        for _ in LogBar(range(5), desc="render", unit=unit, file=out):
            pass
    assert out.getvalue() == ""


def test_a_bar_without_a_total_counts_without_a_percentage():
    out = io.StringIO()
    for _ in LogBar((i for i in range(3)), desc="faces", unit="frame", file=out):
        pass
    assert out.getvalue().splitlines()[-1].startswith("faces: 3frame [")


def test_bars_for_a_log_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    own = tqdm.auto.tqdm
    with bars_for(io.StringIO()):
        assert tqdm.auto.tqdm is LogBar
    assert tqdm.auto.tqdm is own
    with bars_for(Terminal()):
        assert tqdm.auto.tqdm is own
    with pytest.raises(RuntimeError), bars_for(io.StringIO()):
        raise RuntimeError
    assert tqdm.auto.tqdm is own


def test_a_run_logged_to_a_file_writes_whole_lines(media, cli_models, tmp_path, capsys):
    """stderr captured (not a terminal): the scan, render and join bars give their first and last lines."""
    models, base = cli_models
    out = tmp_path / "out.mp4"
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(out), "--models",
                 str(models), "--base-model", str(base), "--steps", "1", "--guidance", "1.0", "--batch-size", "4",
                 "--chunk-size", "4", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    bars = [m.group("desc", "percent", "n") for m in map(LINE.match, err.splitlines()) if m]
    name = media["clip"].name
    assert bars[0] == (f"faces {name}", "0", "0") and (f"faces {name}", "100", "12") in bars
    assert (f"run {name}", "100", "12") in bars and (f"joining {out.name}", "100", "12") in bars
    assert {desc for desc, _, _ in bars} == {f"faces {name}", f"run {name}", f"joining {out.name}"}


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("slow", [True, False])
def test_slow_batches_show_their_denoising_steps(media, cli_models, tmp_path, monkeypatch, slow):
    """On a terminal, a batch whose steps take long (the full model on a CPU: about a minute per step) gets a bar
    over its steps once it has run STEP_BAR_DELAY_S, so the command shows life before its first chunk is done;
    quick batches (a GPU, the tiny model here) show none."""
    from retarget.pipeline import STEP_BAR_DELAY_S

    # slow: every clock reading of the bars moves the delay on, so each step looks slow; quick: the bars' clock
    # stands still, so no step looks slow however busy the machine is
    monkeypatch.setattr(tqdm.std, "time", FakeClock(STEP_BAR_DELAY_S if slow else 0.0))
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    models, base = cli_models
    assert main(["run", str(media["clip"]), "--identity", str(media["photo"]), "-o", str(tmp_path / "out.mp4"),
                 "--models", str(models), "--base-model", str(base), "--steps", "3", "--guidance", "1.0",
                 "--batch-size", "4", "--chunk-size", "8", "--device", "cpu", "--no-overlap"]) == 0
    states = re.findall(r"denoising: +\d+%\|[^|]*\| (\d+)/(\d+) ", terminal.getvalue())
    if slow:
        assert ("3", "3") in states and set(total for _, total in states) == {"3"}
    else:
        assert states == [] and "denoising" not in terminal.getvalue()
