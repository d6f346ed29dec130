"""Official splits from each dataset's own files (`cskd.splits.official_split`, `cskd splits`): what they hold,
the report, and bad input: an error naming the file (and line, field or id), nothing written."""

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cskd.cli import main
from cskd.data import LabelFileError, read_csv_labels, read_split
from cskd.splits import official_split
from cskd.runs import file_sha1
from dataset_layouts import LAYOUTS, aadb_names, write_aadb_mat


def snapshot(root: Path) -> dict:
    "Every file under `root/splits` with its bytes (nothing there: {})."
    d = root / "splits"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.is_dir() else {}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_splits_follow_the_official_lists(name, tmp_path):
    root = tmp_path / name
    facts = LAYOUTS[name](root)
    rep = official_split(name, root, val_fraction=0.25, seed=3)
    train, val, test = (read_split(root / "splits" / f"{s}.txt") for s in ("train", "val", "test"))
    bad = facts["missing"] | facts.get("unreadable", set())
    assert test == [i for i in facts["test"] if i not in bad]
    official_train = facts.get("train") or [i for i in facts["ids"] if i not in facts["test"]]
    assert sorted(train + val) == sorted(i for i in official_train if i not in bad)
    assert not set(train) & set(val) and not set(train + val) & set(test)
    assert len(val) == round(0.25 * (len(train) + len(val)))
    assert rep["val"] == dict(fraction=0.25, seed=3, drawn_from="train", n=len(val))
    assert rep["lists"]["test"]["named"] == len(facts["test"]) and rep["lists"]["train"]["named"] == len(official_train)
    assert set(rep["lists"]["test"]["missing"] + rep["lists"]["train"]["missing"]) == facts["missing"]
    assert rep["labels_without_image"] == sorted(facts["missing"])
    for f, x in rep["files"].items():
        assert file_sha1(root / f) == x["sha1"], f
    for x in rep["sources"].values():
        assert file_sha1(root / x["file"]) == x["sha1"]
    assert json.loads((root / "splits" / "report.json").read_text()) == rep
    assert official_split(name, root, val_fraction=0.25, seed=3) == rep  # deterministic
    assert read_split(root / "splits" / "val.txt") == val
    assert rep["config"]["label_format"] == name


def test_ava_counts_unreadable_images_and_draws_val_like_pyiqa(tmp_path):
    facts = LAYOUTS["ava"](tmp_path)
    rep = official_split("ava", tmp_path)
    (bad,) = facts["unreadable"]
    assert rep["lists"]["train"]["unreadable"] == {bad: "empty file (0 bytes)"}
    assert rep["lists"]["train"]["source"] == "AVA.txt: every row not in the test list"
    n_train = rep["lists"]["train"]["kept"]
    assert rep["val"]["n"] == round(0.05 * n_train) == 1  # the default: 5% of training, seed 0
    assert rep["config"] == dict(
        data_root=str(tmp_path),
        labels="AVA.txt",
        label_format="ava",
        images="images",
        train_split="splits/train.txt",
        val_split="splits/val.txt",
        test_split="splits/test.txt",
    )


def test_merged_label_files_read_back(tmp_path):
    "The merged splits/labels.csv of PARA and AADB read with the named mappings, on the datasets' own scales."
    LAYOUTS["para"](tmp_path / "para")
    official_split("para", tmp_path / "para")
    para = read_csv_labels(tmp_path / "para" / "splits" / "labels.csv", "PARA")
    raw = pd.read_csv(tmp_path / "para" / "annotation" / "PARA-GiaaTrain.csv")
    assert para.file[0] == f"{raw.sessionId[0]}/{raw.imageName[0]}"
    assert para.attrs["bins"] == [1.0 + 0.5 * k for k in range(9)]
    np.testing.assert_allclose(para["mean"][: len(raw)], raw.aestheticScore_mean)
    assert (tmp_path / "para" / "imgs" / para.file[0]).is_file()
    LAYOUTS["aadb"](tmp_path / "aadb")
    official_split("aadb", tmp_path / "aadb")
    aadb = read_csv_labels(tmp_path / "aadb" / "splits" / "labels.csv", "AADB")
    assert aadb["mean"].between(0, 1).all() and aadb.file[-1:].str.startswith("AADB_newtest_originalSize/").all()


def test_aadb_scores_as_a_column_and_images_in_one_folder(tmp_path):
    "Score arrays N x 1 (as some copies of the .mat have them) and every image under images/ are read the same."
    train, test = aadb_names(6), aadb_names(3, offset=6)
    write_aadb_mat(tmp_path / "AADBinfo.mat", train, np.linspace(0, 1, 6), test, [0.2, 0.4, 0.6], column=True)
    for k, n in enumerate(train + test):
        from dataset_layouts import save_photo

        save_photo(tmp_path / "images" / n, k)
    rep = official_split("aadb", tmp_path, val_fraction=0)
    assert read_split(tmp_path / "splits" / "test.txt") == [Path(n).stem for n in test]
    assert rep["val"]["n"] == 0 and rep["lists"]["train"]["kept"] == 6
    lab = pd.read_csv(tmp_path / "splits" / "labels.csv")
    assert lab.ImageFile[0] == f"images/{train[0]}" and lab.score.tolist()[-3:] == [0.2, 0.4, 0.6]


def _bad(call, *texts, root=None):
    before = snapshot(root) if root else None
    with pytest.raises((LabelFileError, FileNotFoundError, KeyError, ValueError)) as e:
        call()
    for t in texts:
        assert t in str(e.value), (t, str(e.value))
    if root:
        assert snapshot(root) == before  # nothing written, nothing changed


def test_missing_files_are_named(tmp_path):
    LAYOUTS["ava"](tmp_path / "ava")
    (tmp_path / "ava" / "aesthetics_image_lists" / "generic_test.jpgl").unlink()
    _bad(lambda: official_split("ava", tmp_path / "ava"), "generic_test.jpgl", root=tmp_path / "ava")
    (tmp_path / "ava" / "AVA.txt").unlink()
    _bad(lambda: official_split("ava", tmp_path / "ava"), "no AVA.txt", root=tmp_path / "ava")
    LAYOUTS["para"](tmp_path / "para")
    (tmp_path / "para" / "annotation" / "PARA-GiaaTest.csv").unlink()
    _bad(lambda: official_split("para", tmp_path / "para"), "PARA-GiaaTest.csv", root=tmp_path / "para")
    LAYOUTS["tad66k"](tmp_path / "tad")
    (tmp_path / "tad" / "merge" / "train.csv").unlink()
    _bad(lambda: official_split("tad66k", tmp_path / "tad"), "merge/train.csv", root=tmp_path / "tad")
    _bad(lambda: official_split("aadb", tmp_path / "tad"), "AADBinfo.mat")
    _bad(lambda: official_split("koniq", tmp_path), "known: ['ava', 'aadb', 'para', 'tad66k']")
    _bad(lambda: official_split("ava", tmp_path / "nope"), "nope does not exist")


def test_a_listed_id_without_label_names_file_line_and_id(tmp_path):
    facts = LAYOUTS["ava"](tmp_path)
    official_split("ava", tmp_path)  # a good split first: the failed run must leave it as it was
    lst = tmp_path / "aesthetics_image_lists" / "generic_test.jpgl"
    lst.write_text("\n".join(facts["test"][:3] + ["12345678"]) + "\n")
    _bad(lambda: official_split("ava", tmp_path), f"{lst}:4: image id '12345678' has no label", root=tmp_path)
    lst.write_text(f"{facts['test'][0]} {facts['test'][1]}\n")
    _bad(lambda: official_split("ava", tmp_path), f"{lst}:1: expected one image id per line", root=tmp_path)


def test_malformed_mat_files(tmp_path):
    LAYOUTS["aadb"](tmp_path)
    official_split("aadb", tmp_path)
    mat = tmp_path / "AADBinfo.mat"
    names = aadb_names(4)
    cases = [
        (lambda: mat.write_bytes(b"MATLAB 5.0 MAT-file, truncated"), "cannot read as a MATLAB file"),
        (
            lambda: _savemat(mat, trainNameList=names, trainScore=[0.1] * 4, testNameList=names[:1]),
            "missing field(s) ['testScore']",
        ),
        (
            lambda: write_aadb_mat(mat, names, [0.1, 0.2, 0.3], names[:1], [0.5]),
            "trainNameList has 4 names but trainScore 3",
        ),
        (
            lambda: write_aadb_mat(mat, names, [0.1, 0.2, 7.0, 0.3], names[:1], [0.5]),
            "trainScore entry 3 (7.0) is not a number in [0, 1]",
        ),
        (
            lambda: _savemat(
                mat, trainNameList=np.arange(4.0), trainScore=[0.1] * 4, testNameList=names[:1], testScore=[0.5]
            ),
            "trainNameList entry 1: not a file name",
        ),
    ]
    for write, text in cases:
        write()
        _bad(lambda: official_split("aadb", tmp_path), str(mat), text, root=tmp_path)


def _savemat(path, **fields):
    from scipy.io import savemat

    savemat(
        path,
        {k: np.asarray(v, dtype=object if isinstance(v[0], str) else None).reshape(1, -1) for k, v in fields.items()},
    )


def test_malformed_csv_files(tmp_path):
    LAYOUTS["para"](tmp_path / "para")
    f = tmp_path / "para" / "annotation" / "PARA-GiaaTrain.csv"
    df = pd.read_csv(f)
    df.drop(columns="aestheticScore_2.5").to_csv(f, index=False)
    _bad(lambda: official_split("para", tmp_path / "para"), str(f), "missing column(s) ['aestheticScore_2.5']")
    df.loc[4, "aestheticScore_mean"] = 7.5
    df.to_csv(f, index=False)
    _bad(lambda: official_split("para", tmp_path / "para"), str(f), "line 6 (7.5)")
    LAYOUTS["tad66k"](tmp_path / "tad")
    t = tmp_path / "tad" / "merge" / "test.csv"
    t.write_text("image,score\n")
    _bad(lambda: official_split("tad66k", tmp_path / "tad"), str(t), "no label rows")
    t.write_bytes(b"\xff\xfe\x00garbage")
    _bad(lambda: official_split("tad66k", tmp_path / "tad"), str(t))


def test_overlapping_train_and_test_lists(tmp_path):
    facts = LAYOUTS["tad66k"](tmp_path)
    test = tmp_path / "merge" / "test.csv"
    rows = test.read_text().splitlines()
    rows.insert(2, f"{facts['train'][5]}.jpg,5.5")
    test.write_text("\n".join(rows) + "\n")
    _bad(
        lambda: official_split("tad66k", tmp_path),
        f"would overlap in 1 image id(s), e.g. '{facts['train'][5]}'",
        f"merge/train.csv:7 and {test}:3",
        root=tmp_path,
    )


def test_a_failed_write_changes_no_file(tmp_path):
    "A file that cannot be written (a folder in the way of its temporary file): no split file changes."
    LAYOUTS["tad66k"](tmp_path)
    official_split("tad66k", tmp_path)
    before = snapshot(tmp_path)
    (tmp_path / "merge" / "train.csv").write_text(
        (tmp_path / "merge" / "train.csv").read_text().replace("5000.jpg", "4999.jpg")
    )
    (tmp_path / "images" / "5000.jpg").rename(tmp_path / "images" / "4999.jpg")
    blocker = tmp_path / "splits" / f".test.txt.{os.getpid()}.tmp"
    blocker.mkdir()
    with pytest.raises(OSError):
        official_split("tad66k", tmp_path)
    blocker.rmdir()
    assert snapshot(tmp_path) == before
    assert not [p for p in (tmp_path / "splits").iterdir() if p.name.endswith(".tmp")]
    official_split("tad66k", tmp_path)  # with the way clear, the new lists are written
    assert "4999" in read_split(tmp_path / "splits" / "train.txt") + read_split(tmp_path / "splits" / "val.txt")


def test_cli_prints_the_report_and_exits_2_on_bad_input(tmp_path):
    LAYOUTS["aadb"](tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["splits", "aadb", str(tmp_path), "--val-fraction", "0.25", "--seed", "1"]) == 0
    text = out.getvalue()
    assert "train list (AADBinfo.mat: trainNameList): 24 ids named, 23 kept" in text
    assert "no image on disk (1): farm1_103_19450000003_8ee7e5e375_b" in text
    assert "validation: 6 images drawn from train (fraction 0.25, seed 1)" in text
    assert f"report: {tmp_path / 'splits' / 'report.json'}" in text
    (tmp_path / "AADBinfo.mat").write_bytes(b"")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["splits", "aadb", str(tmp_path)]) == 2
    assert "cskd splits: error:" in err.getvalue() and "AADBinfo.mat" in err.getvalue()


def test_tad66k_images_at_the_root(tmp_path):
    "TAD66K's images beside merge/ instead of in images/: found, and the config says so."
    facts = LAYOUTS["tad66k"](tmp_path)
    for p in (tmp_path / "images").iterdir():
        p.rename(tmp_path / p.name)
    rep = official_split("tad66k", tmp_path)
    assert rep["config"]["images"] == "." and rep["labels_without_image"] == sorted(facts["missing"])
    assert rep["lists"]["train"]["kept"] == len(facts["train"])
