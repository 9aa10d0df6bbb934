"""The ``mediapipe_ssd`` decoder: MediaPipe's anchors and box coding, checked by hand and on the real models.

The real checks run MediaPipe's own BlazeFace short-range and palm_detection_lite (out of the mediapipe
wheel) on scikit-image's photographs (out of its wheel); neither package is installed or imported. The
wheels are cached once per machine; a fetch that fails fails the test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefleet.agent.efagent import evaluate
from edgefleet.agent.efagent import postprocess as pp
from edgefleet.evaluation import kinds
from edgefleet.recipes.load import load_recipe
from edgefleet.recipes.sources import resolve_source
from edgefleet.recipes.wheels import WheelSpec, cache_folder, cache_root, ensure_wheel, extract_member

REPO = Path(__file__).resolve().parents[1]
SKIMAGE = WheelSpec("scikit-image", "0.25.2")
MEDIAPIPE = WheelSpec("mediapipe", "0.10.14")
PALM_MEMBER = "mediapipe/modules/palm_detection/palm_detection_lite.tflite"
PHOTOS = ("astronaut", "chelsea", "coffee")

# The params a recipe carries (MediaPipe's face_detection_short_range / palm_detection graphs).
FACE = {"feature_maps": [16, 8], "anchors_per_cell": [2, 6], "box_scale": 128, "num_classes": 1,
        "score_clip": 100, "score_threshold": 0.5, "iou_threshold": 0.3, "max_detections": 100}
PALM = dict(FACE, feature_maps=[24, 12], box_scale=192)
ASTRONAUT_FACE = (179.0, 82.0, 274.0, 177.0)  # x0, y0, x1, y1 on the 512x512 photograph


# ---------------------------------------------------------------- pure

def test_registered_on_the_agent_and_for_coco() -> None:
    assert dict(evaluate.DECODERS)["mediapipe_ssd"] is pp.decode_mediapipe_ssd
    assert "mediapipe_ssd" in kinds.evaluator("coco").decoders


def test_anchor_count_and_order() -> None:
    face = pp.mediapipe_anchors(FACE)
    assert face.shape == (896, 2)
    assert pp.mediapipe_anchors(PALM).shape == (2016, 2)
    np.testing.assert_allclose(face[0], [1 / 32, 1 / 32])
    np.testing.assert_allclose(face[1], [1 / 32, 1 / 32])   # 2 anchors per cell of the 16x16 map
    np.testing.assert_allclose(face[2], [3 / 32, 1 / 32])   # then the next column
    np.testing.assert_allclose(face[32], [1 / 32, 3 / 32])  # then the next row
    np.testing.assert_allclose(face[512], [1 / 16, 1 / 16])  # the 8x8 map starts
    np.testing.assert_allclose(face[517], [1 / 16, 1 / 16])  # 6 anchors per cell
    np.testing.assert_allclose(face[518], [3 / 16, 1 / 16])
    np.testing.assert_allclose(face[-1], [15 / 16, 15 / 16])
    rect = pp.mediapipe_anchors({"feature_maps": [[2, 3]], "anchors_per_cell": [1]})
    np.testing.assert_allclose(rect[:4], [[1 / 6, 1 / 4], [3 / 6, 1 / 4], [5 / 6, 1 / 4], [1 / 6, 3 / 4]])


def test_anchor_params_must_agree() -> None:
    with pytest.raises(ValueError, match="anchors_per_cell"):
        pp.mediapipe_anchors({"feature_maps": [16, 8], "anchors_per_cell": [2]})


def _synthetic(num_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Regressors and logits with one box, cx 0.7 cy 0.45 w 0.2 h 0.3, on anchor 688 (8x8 map, row 3, col 5,
    k 2, center (0.6875, 0.4375)), and a weaker overlapping one on the anchor beside it, in input pixels."""
    rng = np.random.default_rng(0)
    regressors = np.zeros((1, 896, 16), dtype=np.float32)
    regressors[0, :, 4:] = rng.uniform(-50, 50, (896, 12))  # keypoints: ignored
    regressors[0, 688, :4] = [(0.7 - 0.6875) * 128, (0.45 - 0.4375) * 128, 0.2 * 128, 0.3 * 128]
    regressors[0, 689, :4] = [(0.71 - 0.6875) * 128, (0.46 - 0.4375) * 128, 0.2 * 128, 0.3 * 128]
    logits = np.full((1, 896, num_classes), -10.0, dtype=np.float32)
    logits[0, 688, -1] = 3.0
    logits[0, 689, -1] = 1.0
    return regressors, logits


def test_synthetic_box_round_trips_to_image_pixels() -> None:
    regressors, logits = _synthetic()
    detections = pp.decode_mediapipe_ssd({"regressors": regressors, "classificators": logits}, FACE, (640, 480))
    assert len(detections) == 1  # the weaker neighbour is suppressed
    (found,) = detections
    np.testing.assert_allclose(found["bbox"], [(0.7 - 0.1) * 640, (0.45 - 0.15) * 480, 0.2 * 640, 0.3 * 480],
                               atol=1e-3)
    assert found["category_id"] == 1
    assert found["score"] == pytest.approx(1 / (1 + np.exp(-3.0)))


def test_output_order_does_not_matter() -> None:
    regressors, logits = _synthetic()
    forward = pp.decode_mediapipe_ssd([regressors, logits], FACE, (640, 480))
    assert pp.decode_mediapipe_ssd([logits, regressors], FACE, (640, 480)) == forward
    assert pp.decode_mediapipe_ssd([logits[0], regressors[0]], FACE, (640, 480)) == forward  # batch squeezed


def test_box_scale_per_axis_and_classes() -> None:
    regressors, logits = _synthetic(num_classes=3)
    params = dict(FACE, num_classes=3, box_scale=[128, 128, 128, 128], category_ids=[5, 7, 9])
    (found,) = pp.decode_mediapipe_ssd([regressors, logits], params, (640, 480))
    assert found["category_id"] == 9
    np.testing.assert_allclose(found["bbox"], [384, 144, 128, 144], atol=1e-3)


def test_huge_logits_are_clipped_not_overflowed() -> None:
    regressors, logits = _synthetic()
    logits[0, 688, 0] = 1e6
    with np.errstate(over="raise"):
        (found,) = pp.decode_mediapipe_ssd([regressors, logits], FACE, (640, 480))
    assert found["score"] == pytest.approx(1.0)


@pytest.mark.parametrize("shapes, num_classes", [
    ([(1, 895, 16), (1, 896, 1)], 1),   # anchors do not fit the feature maps
    ([(1, 896, 4), (1, 896, 4)], 4),    # both (A, 4): shape cannot tell them apart
    ([(1, 896, 16), (1, 896, 2)], 1),   # no (A, C) scores
])
def test_outputs_that_do_not_fit_name_their_shapes(shapes: list[tuple[int, ...]], num_classes: int) -> None:
    outputs = [np.zeros(shape, dtype=np.float32) for shape in shapes]
    with pytest.raises(ValueError, match=r"got shapes \[\({}, {}\)".format(*shapes[0][1:])):
        pp.decode_mediapipe_ssd(outputs, dict(FACE, num_classes=num_classes), (128, 128))


# ---------------------------------------------------------------- the real models

@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mediapipe-ssd") / "downloads"


def _wheel(spec: WheelSpec, downloads: Path) -> Path:
    return ensure_wheel(spec, cache_folder(cache_root(downloads), spec), where="test", log=print)


@pytest.fixture(scope="module")
def photos(downloads: Path) -> dict[str, Path]:
    """scikit-image's astronaut, chelsea (a cat) and coffee photographs, out of its wheel."""
    wheel = _wheel(SKIMAGE, downloads)
    found = {}
    for name in PHOTOS:
        dest = downloads.parent / f"{name}.png"
        extract_member(wheel, f"skimage/data/{name}.png", dest, where="test")
        found[name] = dest
    return found


@pytest.fixture(scope="module")
def blazeface(downloads: Path) -> Path:
    return resolve_source(load_recipe(REPO / "models", "blazeface"), downloads).path


@pytest.fixture(scope="module")
def palm_lite(downloads: Path) -> Path:
    dest = downloads.parent / "palm_detection_lite.tflite"
    extract_member(_wheel(MEDIAPIPE, downloads), PALM_MEMBER, dest, where="test")
    return dest


def _run(model: Path, photo: Path, side: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The model's raw outputs by name on the photo stretched to side x side in [-1, 1]; and the photo's size."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    image = Image.open(photo).convert("RGB")
    resized = image.resize((side, side), Image.Resampling.BILINEAR)
    pixels = (np.asarray(resized, dtype=np.float32) - 127.5) / 127.5
    (detail,) = interpreter.get_input_details()
    assert list(detail["shape"]) == [1, side, side, 3]
    interpreter.set_tensor(detail["index"], pixels[None])
    interpreter.invoke()
    outputs = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    return outputs, image.size


def test_blazeface_finds_the_astronauts_face(blazeface: Path, photos: dict[str, Path]) -> None:
    outputs, size = _run(blazeface, photos["astronaut"], 128)
    assert size == (512, 512)
    assert sorted(v.shape for v in outputs.values()) == [(1, 896, 1), (1, 896, 16)]
    detections = pp.decode_mediapipe_ssd(outputs, FACE, size)
    assert len(detections) == 1
    (face,) = detections
    x, y, w, h = face["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], ASTRONAUT_FACE, atol=8.0)
    assert face["score"] == pytest.approx(0.92, abs=0.03)
    assert face["category_id"] == 1
    # The box is the regressors' first four columns alone: the keypoints play no part.
    no_keypoints = {k: (v * (np.arange(v.shape[-1]) < 4) if v.shape[-1] == 16 else v) for k, v in outputs.items()}
    assert pp.decode_mediapipe_ssd(no_keypoints, FACE, size) == detections
    assert pp.decode_mediapipe_ssd(list(outputs.values())[::-1], FACE, size) == detections


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_blazeface_finds_no_face_in_faceless_photos(blazeface: Path, photos: dict[str, Path], photo: str) -> None:
    outputs, size = _run(blazeface, photos[photo], 128)
    assert pp.decode_mediapipe_ssd(outputs, FACE, size) == []


def test_palm_detection_lite_decodes(palm_lite: Path, photos: dict[str, Path]) -> None:
    outputs, size = _run(palm_lite, photos["astronaut"], 192)
    assert sorted(v.shape for v in outputs.values()) == [(1, 2016, 1), (1, 2016, 18)]
    detections = pp.decode_mediapipe_ssd(outputs, PALM, size)
    for detection in detections:
        x, y, w, h = detection["bbox"]
        assert 0 <= x <= x + w <= 512 and 0 <= y <= y + h <= 512
        assert 0.5 <= detection["score"] <= 1.0
