"""Layout detection and reading of annotation manual dirs, on real and small made-up files."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io

from e2e_tf.datasets import annotation_layouts as layouts
from e2e_tf.datasets import testing

COREL = layouts.FileNames(name="corel5k", short="corel")
ESP = layouts.FileNames(name="espgame", short="esp")
COREL_DIR = testing.COREL5K_DIR
COREL_CSV = "corel5k/ayushidutta__image-annot-quirks/datasets/corel"
COREL_JSON = "corel5k/parham1998__Enhancing-High-Vocabulary-IA-with-a-Novel-Attention-Based-Pooling/datasets/Corel-5k"
ESP_CSV = "espgame/ayushidutta__image-annot-quirks/datasets/espgame"
ESP_JSON = "espgame/parham1998__Enhancing-High-Vocabulary-IA-with-a-Novel-Attention-Based-Pooling/datasets/ESP-Game"
COREL_UNLABELLED = ["20000/20005", "20000/20007", "20000/20014", "20000/20042",
                    "34000/34099", "142000/142069", "201000/201030"]  # from data/README.md


def _copy(target: pathlib.Path, folder: pathlib.Path, names: list[str]) -> pathlib.Path:
    target.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(folder / name, target / name)
    return target


@pytest.fixture(scope="module")
def corel_mat(shared_data):
    """The real Corel5k as read from the .mat layout, and the raw .mat matrices."""
    folder = shared_data / COREL_DIR
    raw = {
        "train": scipy.io.loadmat(folder / "corel5k_train_annot.mat")["annot1"],
        "test": scipy.io.loadmat(folder / "corel5k_test_annot.mat")["annot2"],
    }
    return layouts.read_annotations(folder, COREL), raw


def _assert_same(a: layouts.Annotations, b: layouts.Annotations, same_entries=True):
    assert a.vocabulary == b.vocabulary
    for split in layouts.SPLITS:
        np.testing.assert_array_equal(a.splits[split].labels, b.splits[split].labels)
        if same_entries:
            assert a.splits[split].entries == b.splits[split].entries


@pytest.mark.real_data
def test_mat_layout_reads_real_corel5k_with_its_unlabelled_images(corel_mat, shared_data):
    annotations, raw = corel_mat
    assert len(annotations.vocabulary) == 260
    assert annotations.vocabulary[:3] == (shared_data / COREL_DIR / "corel5k_words.txt").read_text().split()[:3]
    train, test = annotations.splits["train"], annotations.splits["test"]
    assert (len(train.entries), len(test.entries)) == (4500, 499)
    assert train.entries[0] == "1000/1000" and train.labels.dtype == bool
    np.testing.assert_array_equal(train.labels, raw["train"] == 1)
    np.testing.assert_array_equal(test.labels, raw["test"] == 1)
    assert [train.entries[i] for i in np.flatnonzero(~train.labels.any(1))] == COREL_UNLABELLED
    assert test.labels.any(1).all()


@pytest.mark.real_data
def test_hvecs_written_from_real_corel5k_reads_back_identical(corel_mat, shared_data, tmp_path):
    annotations, raw = corel_mat
    source = shared_data / COREL_DIR
    shutil.copyfile(source / "corel5k_words.txt", tmp_path / "corel5k_dictionary.txt")
    for split in layouts.SPLITS:
        shutil.copyfile(source / f"corel5k_{split}_list.txt", tmp_path / f"corel5k_{split}_list.txt")
        layouts.write_hvecs(tmp_path / f"corel5k_{split}_annot.hvecs", raw[split])
    # The sizes data/README.md derives for this layout: rows * (2 + 2 * 260) bytes.
    assert (tmp_path / "corel5k_train_annot.hvecs").stat().st_size == 2_349_000
    assert (tmp_path / "corel5k_test_annot.hvecs").stat().st_size == 260_478
    hvecs = layouts.read_annotations(tmp_path, COREL)
    _assert_same(hvecs, annotations)
    assert hvecs.splits["train"].sources[-1].suffix == ".hvecs"


def test_hvecs_with_a_row_size_other_than_the_vocabulary_is_refused(tmp_path):
    path = tmp_path / "x_train_annot.hvecs"
    layouts.write_hvecs(path, np.ones((4, 5), np.uint16))
    np.testing.assert_array_equal(layouts.read_hvecs(path, 5), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"x_train_annot.hvecs.*d=6.*says d=5"):
        layouts.read_hvecs(path, 6)


@pytest.mark.real_data
def test_csv_layout_with_crlf_list_equals_mat_layout(corel_mat, shared_data, tmp_path):
    csv = shared_data / COREL_CSV
    assert b"\r\n" in (csv / "corel_train_list.txt").read_bytes()
    _copy(tmp_path, csv, [f"corel_{s}_{k}.txt" for s in layouts.SPLITS for k in ("list", "annot")])
    _copy(tmp_path, shared_data / COREL_JSON, ["corel5k_vocabulary.txt"])
    _assert_same(layouts.read_annotations(tmp_path, COREL), corel_mat[0])


@pytest.mark.real_data
def test_json_alone_gives_base_names_and_the_mat_labels(corel_mat, shared_data, tmp_path):
    _copy(tmp_path, shared_data / COREL_JSON, ["corel5k_vocabulary.txt", "train.json", "test.json"])
    annotations = layouts.read_annotations(tmp_path, COREL)
    _assert_same(annotations, corel_mat[0], same_entries=False)
    assert annotations.splits["train"].entries[:2] == ["1000", "1003"]


@pytest.mark.real_data
def test_all_corel5k_files_side_by_side_agree_and_prefer_the_mat(corel_mat, shared_data, tmp_path):
    _copy(tmp_path, shared_data / COREL_DIR, [p.name for p in (shared_data / COREL_DIR).glob("*.*")])
    _copy(tmp_path, shared_data / COREL_CSV, [p.name for p in (shared_data / COREL_CSV).iterdir()])
    _copy(tmp_path, shared_data / COREL_JSON, [p.name for p in (shared_data / COREL_JSON).iterdir()])
    annotations = layouts.read_annotations(tmp_path, COREL)
    _assert_same(annotations, corel_mat[0])
    assert annotations.splits["test"].sources[-1].name == "corel5k_test_annot.mat"


@pytest.mark.real_data
def test_esp_game_public_files_mix_json_train_and_csv_test(shared_data, tmp_path):
    _copy(tmp_path, shared_data / ESP_CSV, ["esp_train_list.txt", "esp_test_list.txt", "esp_test_annot.txt"])
    _copy(tmp_path, shared_data / ESP_JSON, ["espgame_vocabulary.txt", "train.json", "test.json"])
    annotations = layouts.read_annotations(tmp_path, ESP)
    train, test = annotations.splits["train"], annotations.splits["test"]
    assert (len(annotations.vocabulary), len(train.entries), len(test.entries)) == (268, 18689, 2081)
    assert [s.name for s in train.sources] == ["esp_train_list.txt", "train.json"]
    assert [s.name for s in test.sources] == ["esp_test_list.txt", "esp_test_annot.txt"]
    csv = np.loadtxt(tmp_path / "esp_test_annot.txt", delimiter=",", dtype=int)
    np.testing.assert_array_equal(test.labels, csv == 1)
    assert train.entries[0] == "01/15001"
    assert sorted(train.entries[i].split("/")[1] for i in np.flatnonzero(~train.labels.any(1))) == ["146107", "65759"]
    np.testing.assert_allclose(train.labels.sum(1).mean(), 4.685, atol=5e-4)


def _tiny(tmp_path, vocabulary=("sky", "sea", "sun"), train="a/1\r\nb/2", test="a/3\n"):
    (tmp_path / "tiny_dictionary.txt").write_text("\n".join(vocabulary) + "\n")
    (tmp_path / "tiny_train_list.txt").write_text(train)
    (tmp_path / "tiny_test_list.txt").write_text(test)
    (tmp_path / "tiny_train_annot.txt").write_text("1,0,1\n0,0,0\n")
    (tmp_path / "tiny_test_annot.txt").write_text("0,1,0")
    return layouts.FileNames(name="tiny", short="tiny")


def test_small_csv_layout_keeps_unlabelled_rows_and_crlf_entries(tmp_path):
    annotations = layouts.read_annotations(tmp_path, _tiny(tmp_path))
    assert annotations.splits["train"].entries == ["a/1", "b/2"]
    np.testing.assert_array_equal(annotations.splits["train"].labels, [[1, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(annotations.splits["test"].labels, [[0, 1, 0]])


def test_missing_vocabulary_error_lists_the_names_looked_for(tmp_path):
    with pytest.raises(layouts.LayoutError) as error:
        layouts.read_annotations(tmp_path, COREL)
    for name in ("corel5k_dictionary.txt", "corel5k_words.txt", "corel5k_vocabulary.txt", str(tmp_path)):
        assert name in str(error.value)


def test_missing_labels_error_lists_every_layout_and_the_folder(tmp_path):
    names = _tiny(tmp_path)
    (tmp_path / "tiny_test_annot.txt").unlink()
    with pytest.raises(layouts.LayoutError) as error:
        layouts.read_annotations(tmp_path, names)
    for name in ("tiny_test_annot.hvecs", "tiny_test_annot.mat", "tiny_test_annot.txt", "test.json",
                 "tiny_test_list.txt", str(tmp_path)):
        assert name in str(error.value)


def test_matrix_without_its_list_is_refused(tmp_path):
    names = _tiny(tmp_path)
    (tmp_path / "tiny_train_list.txt").unlink()
    with pytest.raises(layouts.LayoutError, match="tiny_train_annot.txt has one label row per image"):
        layouts.read_annotations(tmp_path, names)


def test_disagreeing_files_are_refused_by_name(tmp_path):
    names = _tiny(tmp_path)
    (tmp_path / "tiny_words.txt").write_text("sky\nsea\nsand\n")
    with pytest.raises(ValueError, match="tiny_dictionary.txt and .*tiny_words.txt differ"):
        layouts.read_annotations(tmp_path, names)
    (tmp_path / "tiny_words.txt").unlink()
    (tmp_path / "tiny_test_annot.txt").write_text("0,1\n")
    with pytest.raises(ValueError, match="tiny_test_annot.txt: line 1 has 2 values, expected 3"):
        layouts.read_annotations(tmp_path, names)
    (tmp_path / "tiny_test_annot.txt").write_text("0,1,0\n1,1,1\n")
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(1, 3\)"):
        layouts.read_annotations(tmp_path, names)


def test_json_out_of_list_order_or_with_unknown_words_is_refused(tmp_path):
    names = _tiny(tmp_path)
    (tmp_path / "tiny_train_annot.txt").unlink()
    samples = [{"image_name": "2.jpg", "image_labels": []}, {"image_name": "1.jpg", "image_labels": ["sun"]}]
    (tmp_path / "train.json").write_text(json.dumps({"samples": samples}))
    with pytest.raises(ValueError, match="train.json does not follow the order of .*tiny_train_list.txt"):
        layouts.read_annotations(tmp_path, names)
    samples.reverse()
    (tmp_path / "train.json").write_text(json.dumps({"samples": samples}))
    annotations = layouts.read_annotations(tmp_path, names)
    np.testing.assert_array_equal(annotations.splits["train"].labels, [[0, 0, 1], [0, 0, 0]])
    samples[0]["image_labels"] = ["moon"]
    (tmp_path / "train.json").write_text(json.dumps({"samples": samples}))
    with pytest.raises(ValueError, match="train.json: 1.jpg has label 'moon'"):
        layouts.read_annotations(tmp_path, names)


def test_an_image_in_both_splits_is_refused(tmp_path):
    names = _tiny(tmp_path, test="b/2\n")
    with pytest.raises(ValueError, match="'b/2' is in both the train and test splits"):
        layouts.read_annotations(tmp_path, names)
