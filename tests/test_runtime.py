"""tlkit.runtime: the reporter (what is printed, where, and who may silence it) and the threads that work ahead."""

import importlib.util
import threading

import pytest

from tlkit import api
from tlkit.cli import main
from tlkit.errors import TlkitError
from tlkit.runtime import LogLines, info, is_quiet, map_ahead, progress, reporting, result, warn

from conftest import make_flat


def test_chatter_goes_to_stderr_results_to_stdout_and_quiet_silences_both(capsys):
    info("[bold]chatter[/]")
    warn("careful")
    result("a result")
    captured = capsys.readouterr()
    assert captured.err == "chatter\nwarning: careful\n" and captured.out == "a result\n"  # markup rendered
    with reporting(quiet=True):
        info("chatter")
        result("a result")
        with progress() as bar:
            bar.advance(bar.add_task("work", total=1))
    assert capsys.readouterr() == ("", "")
    with reporting(quiet=True, results=True):  # tlkit -q: no chatter, results still printed
        info("chatter")
        result("a result")
    assert capsys.readouterr() == ("a result\n", "")


def test_quiet_in_one_thread_does_not_silence_another(capsys):
    quiet_entered, loud_spoke = threading.Event(), threading.Event()

    def quiet_call():
        with reporting(quiet=True):
            quiet_entered.set()
            loud_spoke.wait(10)
            info("from the quiet thread")

    def loud_call():
        quiet_entered.wait(10)
        info("from the loud thread")
        loud_spoke.set()

    threads = [threading.Thread(target=quiet_call), threading.Thread(target=loud_call)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert capsys.readouterr().err == "from the loud thread\n"
    assert not is_quiet()


def test_quiet_covers_the_threads_a_call_starts_and_ends_with_an_exception(capsys):
    with reporting(quiet=True):
        list(map_ahead(lambda n: warn(f"in a worker {n}"), range(4), threads=2, ahead=2))
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError), reporting(quiet=True):
        raise RuntimeError("a bug in the middle of a quiet call")
    assert not is_quiet()
    info("heard again")
    assert capsys.readouterr().err == "heard again\n"


def test_two_api_calls_at_once_each_keep_their_own_quiet(tmp_path, capfd):
    for name in ("a", "b"):
        make_flat(tmp_path / name, {"cat": 4, "dog": 4})
    threads = [threading.Thread(target=api.split, args=(tmp_path / name, "2", tmp_path / f"{name}-data"),
                                kwargs={"seed": 1, "mode": "copy", "quiet": name == "a"}) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    err = capfd.readouterr().err
    assert "b-data" in err and "a-data" not in err
    with pytest.raises(TlkitError):
        api.split(tmp_path / "a", "2", tmp_path / "a-data", quiet=True)  # already there: raised while quiet
    api.split(tmp_path / "a", "2", tmp_path / "a-data", seed=1, force=True)
    assert "a-data" in capfd.readouterr().err


def test_a_quiet_command_line_prints_nothing_on_stderr(tmp_path, capfd):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    assert main(["-q", "split", str(src), "--val", "2"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and "training" in captured.out  # -q keeps the result table
    assert main(["split", str(src), "--val", "2", "--force"]) == 0  # the next command speaks again
    assert "manifest" in capfd.readouterr().err


@pytest.mark.parametrize("ipywidgets", [True, False])
def test_a_notebook_draws_a_bar_only_with_ipywidgets(monkeypatch, ipywidgets):
    """rich's live bar in Jupyter draws into an ipywidgets Output; without the package it would only warn."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: (ipywidgets or None) if name == "ipywidgets" else find_spec(name, *rest))
    with reporting() as notebook:
        notebook.chatter.is_jupyter = True
        assert isinstance(progress(), LogLines) is not ipywidgets
