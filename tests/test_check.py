"""tlkit.check and `tlkit check`: what split would refuse, and a split that leaks, are problems."""

import shutil

from tlkit.cli import main

from conftest import make_flat, make_foldered, write_image, write_large_image


def test_a_class_of_a_single_image_is_a_problem_as_split_refuses_it(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 1})
    assert main(["check", str(src)]) == 0
    captured = capsys.readouterr()
    assert "problems found: 1" in captured.out and "single image" in captured.err and "dog" in captured.err
    assert main(["check", "--strict", str(src)]) == 1
    assert main(["split", str(src), "--val", "2"]) == 1
    assert "dog has a single image" in " ".join(capsys.readouterr().err.split())


def test_two_identical_images_are_one_for_the_single_image_rule(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 1})
    shutil.copy(src / "dog.0.jpg", src / "dog.1.jpg")
    assert main(["check", "--strict", str(src)]) == 1  # the identical pair, and dog: one image as split counts
    assert "problems found: 2" in capsys.readouterr().out


def test_a_split_output_may_hold_one_image_of_a_class_per_subset(tmp_path, capsys):
    data = tmp_path / "data"
    make_foldered(data / "training", {"cat": 3, "dog": 1})
    make_foldered(data / "validation", {"cat": 1, "dog": 1})
    for n, path in enumerate(sorted((data / "validation").rglob("*.png"))):
        write_image(path, color=1000 + n)  # not the training files' pixels
    assert main(["check", "--strict", str(data)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_a_file_in_both_subsets_of_a_split_is_a_leak(tmp_path, capsys):
    src = make_flat(tmp_path / "data" / "train", {"cat": 4, "dog": 4})
    assert main(["split", str(src), "--val", "4", "--quiet"]) == 0
    data = tmp_path / "data"
    shutil.copy(next((data / "training" / "cat").iterdir()), data / "validation" / "cat" / "again.jpg")
    capsys.readouterr()
    assert main(["check", str(data)]) == 0
    captured = capsys.readouterr()
    assert "problems found: 1" in captured.out
    err = " ".join(captured.err.split())
    assert "identical files in both training/ and validation/" in err and "validation/cat/again.jpg" in err
    assert main(["check", "--strict", str(data)]) == 1


def test_an_image_over_the_pixel_limit_is_a_problem(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 3})
    write_large_image(src / "cat.9.png")
    assert main(["check", "--strict", str(src)]) == 1
    captured = capsys.readouterr()
    assert "problems found: 1" in captured.out
    err = " ".join(captured.err.split())
    assert "cat.9.png is too large to decode safely (over 89,478,485 pixels" in err
