#!/usr/bin/env python
"""Train edgefleet's bundled shapes detector, deterministically, in a few CPU minutes.

    python models/shapes/train.py [--out models/shapes] [--quick] [--seed 0]
    python models/shapes/train.py --arch relu6-nms [--out models/shapes-relu6]

Writes into --out: shapes_detector.keras, data/val/{images/*.png,annotations.json}
(the held-out split), data/calibration.npy (uint8 images from the training
distribution, for int8 calibration) and metrics.json (held-out COCO mAP of the
saved model, scored with edgefleet.evaluation.coco).

``--arch relu6-nms`` trains the MobileNet-style sibling (ReLU6, depthwise-separable
blocks) on the same data and writes a SavedModel directory, shapes_relu6_detector,
with the box decode and NMS inside its graph, instead of the .keras file.

The anchor layout and decode parameters come from recipe.yaml next to this
script, and anchors/box encoding come from edgefleet.agent.postprocess, the
same code the device decodes with.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ruamel.yaml import YAML

from edgefleet.agent.efagent import postprocess as pp
from edgefleet.datasets import shapes
from edgefleet.evaluation.coco import score_detections

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe.yaml"
MODEL_FILE = "shapes_detector.keras"
# Matching thresholds (RetinaNet's): IoU >= POSITIVE is an object, < NEGATIVE is background,
# in between is ignored so near-misses neither help nor hurt.
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
PRIOR_PROBABILITY = 0.01  # initial class score; keeps focal loss stable in the first steps
# Which backbone layer feeds the head for each recipe feature map ([height, width]).
FEATURE_LAYERS = {(12, 12): "stage3", (6, 6): "stage4"}


@dataclass(frozen=True)
class Config:
    seed: int
    train_images: int
    val_images: int
    calibration_images: int
    epochs: int
    batch_size: int
    learning_rate: float


FULL = Config(seed=0, train_images=6000, val_images=128, calibration_images=64, epochs=8, batch_size=32,
              learning_rate=3e-3)
QUICK = Config(seed=0, train_images=256, val_images=32, calibration_images=16, epochs=2, batch_size=32,
               learning_rate=3e-3)


def load_recipe(path: Path = RECIPE) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def split_seeds(seed: int) -> dict[str, int]:
    """Independent dataset seeds per split, so no image appears in two splits."""
    train, val, calibration = np.random.SeedSequence([seed, 0x5AA9E5]).generate_state(3)
    return {"train": int(train), "val": int(val), "calibration": int(calibration)}


# ---------------------------------------------------------------- targets

def match_anchors(annotations: list[shapes.ImageAnnotation], anchors: np.ndarray, variances: list[float],
                  image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: anchor labels (N, A) int8 (class, -1 background, -2 ignore) and (N, A, 4) box targets."""
    anchors_xyxy = pp.cxcywh_to_xyxy(anchors)
    labels = np.full((len(annotations), len(anchors)), -1, dtype=np.int8)
    targets = np.zeros((len(annotations), len(anchors), 4), dtype=np.float32)
    for i, ann in enumerate(annotations):
        if not ann.objects:
            continue
        xywh = ann.boxes / image_size
        gt_xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        iou = pp.iou_matrix(gt_xyxy, anchors_xyxy)  # (k, A)
        best_gt = iou.argmax(axis=0)
        best_iou = iou.max(axis=0)
        # Every object gets at least its best anchor, even a small one no anchor fits at 0.5.
        forced = iou.argmax(axis=1)
        best_gt[forced] = np.arange(len(forced))
        best_iou[forced] = 1.0
        row = np.where(best_iou >= POSITIVE_IOU, ann.labels[best_gt], -1)
        row[(best_iou >= NEGATIVE_IOU) & (best_iou < POSITIVE_IOU)] = -2
        labels[i] = row
        targets[i] = pp.encode_boxes(pp.xyxy_to_cxcywh(gt_xyxy)[best_gt], anchors, variances)
    return labels, targets


# ---------------------------------------------------------------- model

def build_model(params: dict[str, Any], image_size: int, batch_size: int | None, with_sigmoid: bool):
    """The detector. Edge TPU friendly: Conv/BN/ReLU, static shapes, Reshape/Concatenate, sigmoid.

    Training uses class logits (stable focal loss); the saved model ends in a sigmoid.
    """
    import keras
    from keras import layers

    sizes = _feature_sizes(params)

    def conv_bn(x, filters: int, stride: int, name: str):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    image = keras.Input(shape=(image_size, image_size, 3), batch_size=batch_size, name="image")
    stage3 = _to_12x12(conv_bn, image)
    x = conv_bn(stage3, 96, 2, "stage4a")     # 6
    stage4 = conv_bn(x, 96, 1, "stage4")
    boxes, scores = _heads({"stage3": stage3, "stage4": stage4}, params, sizes, with_sigmoid)
    return keras.Model(image, [boxes, scores], name="shapes_detector")


def _to_12x12(conv_bn: Any, image: Any) -> Any:
    """The full-convolution layers both architectures share, from the 96x96 input to the 12x12 feature map."""
    x = conv_bn(image, 16, 2, "stem")        # 48
    x = conv_bn(x, 32, 2, "stage1")          # 24
    x = conv_bn(x, 32, 1, "stage1b")
    x = conv_bn(x, 64, 2, "stage2")          # 12
    return conv_bn(x, 64, 1, "stage3")


def build_relu6_model(params: dict[str, Any], image_size: int, batch_size: int | None, with_sigmoid: bool):
    """The MobileNet-style sibling (``--arch relu6-nms``): ReLU6 activations, and depthwise-separable
    blocks at 6x6. Same feature maps, heads and raw outputs as build_model.
    """
    import keras
    from keras import layers

    sizes = _feature_sizes(params)

    def bn_relu6(x, name: str):
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation("relu6", name=f"{name}_relu6")(x)  # a Relu6 op, what TF-TRT rewrites

    def conv_bn(x, filters: int, stride: int, name: str):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
        return bn_relu6(x, name)

    def separable(x, filters: int, stride: int, name: str):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = bn_relu6(x, f"{name}_dw")
        x = layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
        return bn_relu6(x, name)

    image = keras.Input(shape=(image_size, image_size, 3), batch_size=batch_size, name="image")
    # Full convolutions up to 12x12, as build_model: separable ones there cost too much accuracy
    # (held-out mAP@0.5 after 8 epochs: 0.76 with them from 24x24 on, 0.83 from 12x12 on, 0.85 as here).
    stage3 = _to_12x12(conv_bn, image)
    x = separable(stage3, 128, 2, "stage4a")  # 6
    x = separable(x, 128, 1, "stage4b")
    stage4 = separable(x, 128, 1, "stage4")
    boxes, scores = _heads({"stage3": stage3, "stage4": stage4}, params, sizes, with_sigmoid)
    return keras.Model(image, [boxes, scores], name="shapes_relu6_detector")


def _feature_sizes(params: dict[str, Any]) -> list[tuple[int, int]]:
    sizes = [tuple(fm) for fm in params["feature_maps"]]
    if sorted(sizes) != sorted(FEATURE_LAYERS):
        raise SystemExit(f"recipe feature_maps {sizes} do not match the backbone's {sorted(FEATURE_LAYERS)}")
    return sizes


def _heads(features: dict[str, Any], params: dict[str, Any], sizes: list[tuple[int, int]], with_sigmoid: bool):
    """The SSD heads both backbones share: (1, A, 4) box deltas and (1, A, C) class logits or scores."""
    import keras
    from keras import layers

    num_classes = int(params["num_classes"])
    per_location = pp.anchors_per_location(params)
    bias = float(-np.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
    box_parts, cls_parts = [], []
    for (height, width), k in zip(sizes, per_location):
        name = FEATURE_LAYERS[(height, width)]
        f = features[name]
        box = layers.Conv2D(k * 4, 3, padding="same", name=f"{name}_box")(f)
        cls = layers.Conv2D(k * num_classes, 3, padding="same", name=f"{name}_cls",
                            bias_initializer=keras.initializers.Constant(bias))(f)
        box_parts.append(layers.Reshape((height * width * k, 4), name=f"{name}_box_flat")(box))
        cls_parts.append(layers.Reshape((height * width * k, num_classes), name=f"{name}_cls_flat")(cls))
    boxes = layers.Concatenate(axis=1, name="boxes")(box_parts)
    logits = layers.Concatenate(axis=1, name="class_logits")(cls_parts)
    scores = layers.Activation("sigmoid", name="scores")(logits) if with_sigmoid else logits
    return boxes, scores


# ---------------------------------------------------------------- training

def train(model, images: np.ndarray, labels: np.ndarray, targets: np.ndarray, config: Config,
          num_classes: int, log=print) -> None:
    import keras
    import tensorflow as tf

    steps_per_epoch = len(images) // config.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10, decay_steps=steps_per_epoch * config.epochs,
        warmup_target=config.learning_rate, warmup_steps=steps_per_epoch, alpha=0.02)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)

    @tf.function(reduce_retracing=True)
    def step(x_uint8, y_labels, y_boxes):
        x = tf.cast(x_uint8, tf.float32) / 255.0
        y_labels = tf.cast(y_labels, tf.int32)
        positive = tf.cast(y_labels >= 0, tf.float32)
        counted = tf.cast(y_labels >= -1, tf.float32)
        n_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
        onehot = tf.one_hot(tf.maximum(y_labels, 0), num_classes) * positive[..., None]
        with tf.GradientTape() as tape:
            boxes, logits = model(x, training=True)
            p = tf.sigmoid(logits)
            ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits)
            p_t = onehot * p + (1 - onehot) * (1 - p)
            alpha_t = onehot * FOCAL_ALPHA + (1 - onehot) * (1 - FOCAL_ALPHA)
            focal = tf.reduce_sum(alpha_t * tf.pow(1 - p_t, FOCAL_GAMMA) * ce, axis=-1)
            cls_loss = tf.reduce_sum(focal * counted) / n_pos
            err = tf.abs(boxes - y_boxes)
            huber = tf.where(err < 1.0, 0.5 * err * err, err - 0.5)
            box_loss = tf.reduce_sum(tf.reduce_sum(huber, axis=-1) * positive) / n_pos
            loss = cls_loss + box_loss
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return cls_loss, box_loss

    order_rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = order_rng.permutation(len(images))
        totals = np.zeros(2)
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
            totals += [float(v) for v in step(images[idx], labels[idx], targets[idx])]
        cls_loss, box_loss = totals / max(steps_per_epoch, 1)
        log(f"epoch {epoch + 1}/{config.epochs}: cls {cls_loss:.4f} box {box_loss:.4f} "
            f"({time.perf_counter() - started:.1f}s)")


# ---------------------------------------------------------------- evaluation

def predict_detections(model, images: np.ndarray, recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the batch-1 model image by image, as a device would, and decode with the device's code."""
    import tensorflow as tf

    norm = recipe["input"]["normalization"]
    mean = np.asarray(norm["mean"], dtype=np.float32)
    std = np.asarray(norm["std"], dtype=np.float32)
    params = recipe["task"]["postprocess"]["params"]
    run = tf.function(lambda x: model(x, training=False))
    detections = []
    for index, image in enumerate(images):
        x = ((image.astype(np.float32) - mean) / std)[None]
        outputs = [o.numpy() for o in run(tf.constant(x))]
        height, width = image.shape[:2]
        for det in pp.decode_detections(outputs, params, (width, height)):
            detections.append({"image_id": index + 1, **det})
    return detections


def predict_exported(saved_model: Path, images: np.ndarray, recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported SavedModel's serving signature, image by image, read with the device's ``detections`` code."""
    import tensorflow as tf

    norm = recipe["input"]["normalization"]
    mean = np.asarray(norm["mean"], dtype=np.float32)
    std = np.asarray(norm["std"], dtype=np.float32)
    params = recipe["task"]["postprocess"]["params"]
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    detections = []
    for index, image in enumerate(images):
        x = ((image.astype(np.float32) - mean) / std)[None]
        outputs = {k: v.numpy() for k, v in serve(tf.constant(x)).items()}
        height, width = image.shape[:2]
        for det in pp.read_detections(outputs, params, (width, height)):
            detections.append({"image_id": index + 1, **det})
    return detections


# ---------------------------------------------------------------- export with NMS (--arch relu6-nms)

def export_with_nms(model, params: dict[str, Any], path: Path) -> None:
    """Write a SavedModel whose serving signature decodes the boxes and runs NMS inside the graph.

    Signature: ``image`` (1, H, W, 3) float32 in [0, 1] -> ``boxes`` (1, N, 4) [ymin, xmin, ymax,
    xmax] normalised, ``scores`` (1, N), ``classes`` (1, N) float 0-based, ``num_detections`` (1,),
    N = max_detections; slots past num_detections are zero. It is the ssd_anchors decode of
    postprocess.py in TensorFlow ops that TF 1.15 also has (the Jetson's), with NonMaxSuppressionV4.
    """
    import tensorflow as tf

    image_shape = tuple(int(d) for d in model.inputs[0].shape)
    module = tf.Module()
    # Tracked in the model's own order: keras.export.ExportArchive lists them in an order that
    # changes from run to run, and so do the SavedModel's bytes.
    module.weights = [v.value for v in model.variables]
    module.serve = tf.function(_nms_head(model, params),
                               input_signature=[tf.TensorSpec(image_shape, tf.float32, name="image")])
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _nms_head(model, params: dict[str, Any]):
    import tensorflow as tf

    anchors = pp.generate_anchors(params)
    centers, sides = tf.constant(anchors[:, :2]), tf.constant(anchors[:, 2:])
    variances = np.asarray(params["variances"], dtype=np.float32)
    num_classes = int(params["num_classes"])
    top_k = int(params["pre_nms_top_k"])
    max_detections = int(params["max_detections"])

    def serve(image):
        # A caller that forgets the recipe's / 255 gets an error, not an empty result. It is also the
        # Assert op (with control edges to every output) that TF-TRT's remove_asserts rewrite drops.
        # String-only data keeps it one Assert op: float data would wrap it in a Switch/Merge cond.
        checked = tf.debugging.Assert(tf.logical_and(tf.reduce_min(image) >= 0.0, tf.reduce_max(image) <= 1.0),
                                      ["image values must lie in [0, 1] (pixels / 255)"])
        with tf.control_dependencies([checked]):
            image = tf.identity(image)
        deltas, scores = model(image, training=False)  # (1, A, 4), (1, A, C)
        # pp.decode_boxes, in float32: centre shifts and log-size scales against the anchors.
        cxy = deltas[0, :, :2] * variances[:2] * sides + centers
        wh = tf.exp(tf.minimum(deltas[0, :, 2:] * variances[2:], pp._MAX_LOG_SCALE)) * sides
        lo = tf.minimum(tf.maximum(cxy - wh / 2.0, 0.0), 1.0)
        hi = tf.minimum(tf.maximum(cxy + wh / 2.0, 0.0), 1.0)
        yxyx = tf.concat([lo[:, 1:2], lo[:, 0:1], hi[:, 1:2], hi[:, 0:1]], axis=1)
        # The best (anchor, class) pairs, as the host decode's pre_nms_top_k.
        best_scores, best = tf.math.top_k(tf.reshape(scores[0], [-1]), k=top_k)
        anchor_index = best // num_classes
        class_index = best - anchor_index * num_classes
        candidates = tf.gather(yxyx, anchor_index)
        # Class-wise NMS in one op: boxes lie in [0, 1], so shifting each class by 2 keeps classes apart.
        shifted = candidates + 2.0 * tf.cast(class_index, tf.float32)[:, None]
        selected, valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=shifted, scores=best_scores, max_output_size=max_detections,
            iou_threshold=float(params["iou_threshold"]), score_threshold=float(params["score_threshold"]),
            pad_to_max_output_size=True)
        # Padded slots repeat index 0; zero them so only the first num_detections mean anything.
        live = tf.cast(tf.range(max_detections) < valid, tf.float32)
        return {
            "boxes": (tf.gather(candidates, selected) * live[:, None])[None],
            "scores": (tf.gather(best_scores, selected) * live)[None],
            "classes": (tf.cast(tf.gather(class_index, selected), tf.float32) * live)[None],
            "num_detections": tf.cast(valid, tf.float32)[None],
        }

    return serve


# ---------------------------------------------------------------- main

@dataclass(frozen=True)
class Arch:
    build: Callable[..., Any]   # build_model's signature
    model_file: str
    out: Path                   # the default --out
    recipe: Path                # the recipe whose input, classes and postprocess score the held-out split
    with_nms: bool              # saved as a SavedModel with decode + NMS inside, not as .keras
    epochs: int = FULL.epochs   # of a full run


# Both read the anchor layout from models/shapes/recipe.yaml (RECIPE): the relu6-nms model bakes it in.
ARCHS = {
    "ssd-relu": Arch(build_model, MODEL_FILE, HERE, RECIPE, with_nms=False),
    # 12 epochs: the separable blocks learn slower; 8 left it at mAP@0.5 0.85.
    "relu6-nms": Arch(build_relu6_model, "shapes_relu6_detector", HERE.parent / "shapes-relu6",
                      HERE.parent / "shapes-relu6" / "recipe.yaml", with_nms=True, epochs=12),
}


def save_model(arch: Arch, model, params: dict[str, Any], path: Path) -> None:
    if arch.with_nms:
        export_with_nms(model, params, path)
    else:
        model.save(path)


def held_out_detections(arch: Arch, path: Path, images: np.ndarray, recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved model's detections, reloaded from disk and decoded as its recipe says."""
    if arch.with_nms:
        return predict_exported(path, images, recipe)
    import keras

    return predict_detections(keras.models.load_model(path, compile=False), images, recipe)


def check_recipes(anchors_recipe: dict[str, Any], eval_recipe: dict[str, Any]) -> None:
    """The relu6-nms recipe must describe what the export bakes in from the anchors recipe."""
    same = [("input", "shape"), ("input", "normalization"), ("task", "classes")]
    for section, key in same:
        if anchors_recipe[section][key] != eval_recipe[section][key]:
            raise SystemExit(f"recipes disagree on {section}.{key}: {anchors_recipe[section][key]} vs "
                             f"{eval_recipe[section][key]}")
    baked = anchors_recipe["task"]["postprocess"]["params"]["max_detections"]
    if eval_recipe["task"]["postprocess"]["params"].get("max_detections", baked) != baked:
        raise SystemExit(f"the export keeps {baked} detections; the recipe's max_detections must match")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="ssd-relu",
                        help="ssd-relu: the shapes model (default); relu6-nms: its MobileNet-style sibling "
                             "with decode + NMS in the exported graph, for the TF-TRT rewrites")
    parser.add_argument("--out", type=Path, help="output directory (default: the arch's model folder)")
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: a smoke test, not a model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--train-images", type=int, help="override the number of training images")
    args = parser.parse_args(argv)
    arch = ARCHS[args.arch]
    out = args.out or arch.out
    config = QUICK if args.quick else replace(FULL, epochs=arch.epochs)
    overrides = {"seed": args.seed, "epochs": args.epochs, "train_images": args.train_images}
    config = Config(**{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if config.epochs < 1 or config.train_images < config.batch_size:
        parser.error(f"need at least 1 epoch and {config.batch_size} training images")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    recipe = load_recipe()
    eval_recipe = load_recipe(arch.recipe)
    check_recipes(recipe, eval_recipe)
    classes = list(recipe["task"]["classes"])
    params = recipe["task"]["postprocess"]["params"]
    if int(params["num_classes"]) != len(classes) or tuple(classes) != shapes.CLASSES:
        raise SystemExit(f"recipe classes {classes} / num_classes do not match the dataset's {shapes.CLASSES}")
    image_size = int(recipe["input"]["shape"][1])
    anchors = pp.generate_anchors(params)

    seeds = split_seeds(config.seed)
    started = time.perf_counter()
    train_images, train_ann = shapes.generate(config.train_images, seeds["train"])
    val_images, val_ann = shapes.generate(config.val_images, seeds["val"])
    calibration, _ = shapes.generate(config.calibration_images, seeds["calibration"])
    labels, targets = match_anchors(train_ann, anchors, params["variances"], image_size)
    data_seconds = time.perf_counter() - started
    print(f"data: {len(train_images)} train / {len(val_images)} val / {len(calibration)} calibration images, "
          f"{len(anchors)} anchors, {data_seconds:.1f}s")

    model = arch.build(params, image_size, batch_size=None, with_sigmoid=False)
    started = time.perf_counter()
    train(model, train_images, labels, targets, config, len(classes))
    train_seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    # Everything is built in a scratch directory and moved in at the end: an interrupted
    # run leaves the previous model, split and metrics intact and consistent.
    with tempfile.TemporaryDirectory(dir=out, prefix=".train-") as tmp:
        scratch = Path(tmp)
        exported = arch.build(params, image_size, batch_size=1, with_sigmoid=True)
        for layer in exported.layers:  # by name: both graphs share layer names, not necessarily order
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        save_model(arch, exported, params, scratch / arch.model_file)
        annotations_json = shapes.write_coco(scratch / "data" / "val", val_images, val_ann, classes)
        np.save(scratch / "data" / "calibration.npy", calibration)

        score = score_detections(annotations_json,
                                 held_out_detections(arch, scratch / arch.model_file, val_images, eval_recipe))
        metrics = {
            "model": arch.model_file,
            "map_50": round(score["map_50"], 4),
            "map_50_95": round(score["map_50_95"], 4),
            "map_75": round(score["map_75"], 4),
            "evaluator": score["evaluator"],
            "split": "data/val",
            "val_images": config.val_images,
            "val_objects": score["num_ground_truth"],
            "train_images": config.train_images,
            "calibration_images": config.calibration_images,
            "seed": config.seed,
            "dataset_seeds": seeds,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "quick": args.quick,
            "parameters": int(exported.count_params()),
            "anchors": int(len(anchors)),
            "training_seconds": round(train_seconds, 1),
            "data_seconds": round(data_seconds, 1),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "cpu_count": os.cpu_count(),
        }
        if arch.with_nms:
            metrics.update(nms_metrics(args.arch, exported, val_images, recipe, annotations_json))
        (scratch / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

        (out / "data").mkdir(exist_ok=True)
        if (out / "data" / "val").exists():
            shutil.rmtree(out / "data" / "val")
        if (out / arch.model_file).is_dir():
            shutil.rmtree(out / arch.model_file)  # os.replace cannot replace a non-empty directory
        for rel in ("data/val", "data/calibration.npy", arch.model_file, "metrics.json"):
            os.replace(scratch / rel, out / rel)
    print(json.dumps({k: metrics[k] for k in ("map_50", "map_50_95", "parameters", "training_seconds")}))
    return 0


def nms_metrics(arch_name: str, model, val_images: np.ndarray, recipe: dict[str, Any],
                annotations_json: Path) -> dict[str, Any]:
    """What only the relu6-nms model records: the same weights scored through the host's ssd_anchors decode,
    which shows the in-graph decode + NMS kept the accuracy."""
    host = score_detections(annotations_json, predict_detections(model, val_images, recipe))
    return {"arch": arch_name, "anchors_recipe": "../shapes/recipe.yaml",
            "ssd_anchors_decode": {"map_50": round(host["map_50"], 4), "map_50_95": round(host["map_50_95"], 4)}}


if __name__ == "__main__":
    sys.exit(main())
