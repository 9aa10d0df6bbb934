"""The procedural shapes dataset: deterministic, sensible boxes, valid COCO."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from edgefleet.datasets import CLASSES, IMAGE_SIZE, generate, write_coco


def _digest(images: np.ndarray, annotations) -> str:
    h = hashlib.sha256(images.tobytes())
    h.update(repr([a.objects for a in annotations]).encode())
    return h.hexdigest()


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    a_images, a_ann = generate(12, seed=7)
    b_images, b_ann = generate(12, seed=7)
    c_images, _ = generate(12, seed=8)
    assert _digest(a_images, a_ann) == _digest(b_images, b_ann)
    assert not np.array_equal(a_images, c_images)


def test_shorter_run_is_a_prefix_of_a_longer_one():
    short, short_ann = generate(3, seed=5)
    long, long_ann = generate(6, seed=5)
    assert np.array_equal(short, long[:3])
    assert short_ann == long_ann[:3]


def test_images_and_boxes_are_well_formed():
    images, annotations = generate(40, seed=1)
    assert images.shape == (40, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    counts = [len(a.objects) for a in annotations]
    assert min(counts) >= 1 and max(counts) <= 4
    labels = np.concatenate([a.labels for a in annotations])
    assert set(labels.tolist()) == set(range(len(CLASSES)))
    for ann in annotations:
        boxes = ann.boxes
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= IMAGE_SIZE).all() and (boxes[:, 1] + boxes[:, 3] <= IMAGE_SIZE).all()
        for obj in ann.objects:
            assert 0 < obj.area <= obj.bbox[2] * obj.bbox[3]
    # Backgrounds are textured, not flat: every image has plenty of distinct colours.
    assert all(len(np.unique(img.reshape(-1, 3), axis=0)) > 200 for img in images)


def test_boxes_sit_on_objects_that_stand_out_from_the_background():
    images, annotations = generate(60, seed=3)
    contrasts = []
    for image, ann in zip(images, annotations):
        obj = ann.objects[-1]  # drawn last, so never occluded
        x, y, w, h = (int(v) for v in obj.bbox)
        cx, cy = x + w // 2, y + h // 2
        centre = image[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).astype(float).mean(0)
        ring = np.zeros(image.shape[:2], bool)
        ring[max(y - 3, 0):y + h + 3, max(x - 3, 0):x + w + 3] = True
        ring[y:y + h, x:x + w] = False
        outside = image[ring].astype(float).mean(0)
        contrasts.append(np.linalg.norm(centre - outside))
    # A box off its object, or an object the colour of its background, would fail this.
    assert np.mean(np.array(contrasts) > 30) >= 0.9


def test_write_coco_round_trips_through_pycocotools(tmp_path):
    images, annotations = generate(6, seed=2)
    path = write_coco(tmp_path, images, annotations, CLASSES)
    doc = json.loads(path.read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3]
    assert [c["name"] for c in doc["categories"]] == list(CLASSES)
    assert {a["iscrowd"] for a in doc["annotations"]} == {0}
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])

    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    for index, (image, ann) in enumerate(zip(images, annotations)):
        info = coco.loadImgs(index + 1)[0]
        assert (info["width"], info["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
        on_disk = np.asarray(Image.open(tmp_path / "images" / info["file_name"]))
        assert np.array_equal(on_disk, image)  # PNG is lossless: what was scored is what was trained on
        coco_anns = coco.loadAnns(coco.getAnnIds(imgIds=index + 1))
        assert [a["bbox"] for a in coco_anns] == [list(o.bbox) for o in ann.objects]
        assert [a["category_id"] for a in coco_anns] == [o.label + 1 for o in ann.objects]
        assert all(a["area"] > 0 for a in coco_anns)


def test_write_coco_rejects_mismatched_inputs(tmp_path):
    images, annotations = generate(2, seed=0)
    with pytest.raises(ValueError, match="2 images but 1 annotations"):
        write_coco(tmp_path, images, annotations[:1], CLASSES)
    with pytest.raises(ValueError, match="uint8"):
        write_coco(tmp_path, images.astype(np.float32), annotations, CLASSES)
