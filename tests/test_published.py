"""The published AVA numbers, now a data file shipped with the package: the loader gives the table that the
Python literals of `cskd.pipeline` held before (PUBLISHED_AVA, PUBLISHED_AVA_NOT_COMPARABLE)."""

import pandas as pd

from cskd.pipeline import published_ava

PYIQA = "pyiqa (chaofengc/IQA-PyTorch), tests/IAA_benchmark_results.csv"
CHECKED = "as the paper states; not checked against the official split"


def test_published_ava_is_the_table_the_literals_held():
    comparable = pd.DataFrame(
        [
            ("Q-Align (an MLLM)", 0.8223, 0.8192, 0.6307),
            ("TOPIQ-IAA (Swin)", 0.7910, 0.7902, 0.5969),
            ("TOPIQ-IAA (ResNet-50)", 0.7359, 0.7370, 0.5423),
            ("NIMA (Inception-ResNet-v2, retrained by pyiqa)", 0.7126, 0.7172, 0.5213),
            ("LAION aesthetic predictor (CLIP ViT-L/14 + MLP)", 0.6653, 0.6660, 0.4788),
            ("NIMA (VGG-16, retrained by pyiqa)", 0.6570, 0.6624, 0.4719),
            ("CLIP-IQA (zero-shot)", 0.3383, 0.3576, 0.2301),
        ],
        columns=["model", "srcc", "plcc", "krcc"],
    ).assign(split="AVA official: generic_test.jpgl ids with an image", test_images=19930, source=PYIQA)
    pd.testing.assert_frame_equal(published_ava(), comparable)


def test_published_ava_not_comparable_is_the_table_the_literals_held():
    papers = pd.DataFrame(
        [
            ("TANet", 0.758, 0.765, "own split, not comparable", 12776, "He et al., IJCAI 2022"),
            ("NIMA", 0.612, 0.636, CHECKED, None, "Talebi & Milanfar, 2018"),
            ("MUSIQ", 0.726, 0.738, CHECKED, None, "Ke et al., ICCV 2021"),
            ("MLSP", 0.756, 0.757, CHECKED, None, "Hosu et al., CVPR 2019"),
            ("VILA", 0.774, 0.774, CHECKED, None, "Ke et al., CVPR 2023"),
            ("UniQA", 0.776, 0.776, CHECKED, None, "UniQA paper"),
        ],
        columns=["model", "srcc", "plcc", "split", "test_images", "source"],
    )
    pd.testing.assert_frame_equal(published_ava(comparable=False), papers)
