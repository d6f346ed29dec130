"""The four datasets laid out the way their distributions ship them, small: AVA (AVA.txt rows from the real
sample, the `aesthetics_image_lists` folder, `images/<id>.jpg`), AADB (`AADBinfo.mat` written with scipy in the
MATLAB structure of the release, two image folders), PARA (`annotation/PARA-Giaa{Train,Test}.csv`,
`imgs/<session>/`), TAD66K (`merge/{train,test}.csv`, `images/`). The images are crops of real photographs
(scikit-image's sample data). Each builder returns the facts a test checks."""

from pathlib import Path

import numpy as np
import pandas as pd
import skimage.data
from PIL import Image
from scipy.io import savemat

SAMPLE = Path(__file__).parent / "data" / "AVA_sample.txt"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
PARA_BINS = [1.0 + 0.5 * k for k in range(9)]


def photo(k: int, size: int = 48) -> Image.Image:
    "The k-th crop of a real photograph, `size` pixels square (deterministic)."
    img = getattr(skimage.data, PHOTOS[k % len(PHOTOS)])()
    rng = np.random.default_rng(k)
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) * 2 // 3))
    y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    return Image.fromarray(img[y : y + side, x : x + side]).convert("RGB").resize((size, size))


def save_photo(path: Path, k: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(k).save(path, quality=85)


def sample_rows(n: int, skip: int = 0) -> list[str]:
    "`n` real AVA.txt lines."
    return SAMPLE.read_text().splitlines()[skip : skip + n]


def ava_layout(root: Path, n: int = 32, n_test: int = 8) -> dict:
    "AVA: the first `n` sample rows, `n_test` of them in the test list; a test and a training image missing, one empty."
    rows = sample_rows(n)
    ids = [r.split()[1] for r in rows]
    (root / "aesthetics_image_lists").mkdir(parents=True)
    (root / "AVA.txt").write_text("\n".join(rows) + "\n")
    test = ids[:n_test]
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test) + "\n")
    (root / "aesthetics_image_lists" / "generic_ls_train.jpgl").write_text("\n".join(ids[n_test : n_test + 4]) + "\n")
    missing = {test[1], ids[-1]}
    for k, i in enumerate(ids):
        if i not in missing:
            save_photo(root / "images" / f"{i}.jpg", k)
    (root / "images" / f"{ids[n_test + 2]}.jpg").write_bytes(b"")  # a training image that cannot be read
    return dict(ids=ids, test=test, missing=missing, unreadable={ids[n_test + 2]})


def aadb_names(n: int, offset: int = 0) -> list[str]:
    return [f"farm1_{100 + k}_{19450000000 + k}_8ee7e5e375_b.jpg" for k in range(offset, offset + n)]


def write_aadb_mat(path: Path, train: list, train_scores, test: list, test_scores, column: bool = False):
    "`AADBinfo.mat` as the release has it: 1 x N cell arrays of file names and 1 x N score arrays (N x 1: `column`)."

    def cells(names):
        a = np.empty((1, len(names)), dtype=object)
        for k, s in enumerate(names):
            a[0, k] = s
        return a

    def scores(v):
        v = np.asarray(v, dtype=np.float64)
        return v.reshape(-1, 1) if column else v.reshape(1, -1)

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(
        path,
        dict(
            trainNameList=cells(train),
            trainScore=scores(train_scores),
            testNameList=cells(test),
            testScore=scores(test_scores),
        ),
    )


def aadb_layout(root: Path, n_train: int = 24, n_test: int = 8) -> dict:
    train, test = aadb_names(n_train), aadb_names(n_test, offset=n_train)
    rng = np.random.default_rng(0)
    write_aadb_mat(
        root / "AADBinfo.mat", train, rng.uniform(0, 1, n_train).round(2), test, rng.uniform(0, 1, n_test).round(2)
    )
    missing = {Path(train[3]).stem}
    for k, name in enumerate(train):
        if Path(name).stem not in missing:
            save_photo(root / "datasetImages_originalSize" / name, k)
    for k, name in enumerate(test):
        save_photo(root / "AADB_newtest_originalSize" / name, 100 + k)
    return dict(train=[Path(n).stem for n in train], test=[Path(n).stem for n in test], missing=missing)


def para_table(rows: list, session_of, first: int) -> pd.DataFrame:
    "PARA GIAA rows: 9-bin vote counts (from real AVA counts), their mean, and a few of the other columns."
    votes = np.array([[int(v) for v in r.split()[2:11]] for r in rows])
    votes[votes.sum(1) == 0, 4] = 1
    df = pd.DataFrame(
        {
            "sessionId": [session_of(k) for k in range(first, first + len(rows))],
            "imageName": [f"iaa_pub{k}_.jpg" for k in range(first, first + len(rows))],
        }
    )
    for j, b in enumerate(PARA_BINS):
        df[f"aestheticScore_{b:.1f}"] = votes[:, j]
    df["aestheticScore_mean"] = (votes @ np.array(PARA_BINS) / votes.sum(1)).round(4)
    df["qualityScore_mean"] = 3.0
    return df


def para_layout(root: Path, n_train: int = 24, n_test: int = 8) -> dict:
    session = lambda k: f"session{k // 10}"
    train = para_table(sample_rows(n_train, 100), session, 1)
    test = para_table(sample_rows(n_test, 200), session, 1 + n_train)
    (root / "annotation").mkdir(parents=True)
    train.to_csv(root / "annotation" / "PARA-GiaaTrain.csv", index=False)
    test.to_csv(root / "annotation" / "PARA-GiaaTest.csv", index=False)
    for k, r in enumerate(pd.concat([train, test]).itertuples()):
        save_photo(root / "imgs" / r.sessionId / r.imageName, 200 + k)
    return dict(
        train=[Path(n).stem for n in train.imageName], test=[Path(n).stem for n in test.imageName], missing=set()
    )


def tad66k_layout(root: Path, n_train: int = 24, n_test: int = 8) -> dict:
    means = [
        float(np.dot(np.arange(1, 11), v) / sum(v))
        for v in ([int(x) for x in r.split()[2:12]] for r in sample_rows(32, 300))
    ]
    names = [f"{5000 + k}.jpg" for k in range(n_train + n_test)]
    (root / "merge").mkdir(parents=True)
    pd.DataFrame({"image": names[:n_train], "score": np.round(means[:n_train], 3)}).to_csv(
        root / "merge" / "train.csv", index=False
    )
    pd.DataFrame({"image": names[n_train:], "score": np.round(means[n_train:], 3)}).to_csv(
        root / "merge" / "test.csv", index=False
    )
    missing = {Path(names[n_train]).stem}
    for k, name in enumerate(names):
        if Path(name).stem not in missing:
            save_photo(root / "images" / name, 300 + k)
    return dict(
        train=[Path(n).stem for n in names[:n_train]], test=[Path(n).stem for n in names[n_train:]], missing=missing
    )


LAYOUTS = {"ava": ava_layout, "aadb": aadb_layout, "para": para_layout, "tad66k": tad66k_layout}
