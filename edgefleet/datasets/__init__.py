"""Procedural datasets, generated on the host so the demo needs no downloads."""
from edgefleet.datasets.shapes import CLASSES, IMAGE_SIZE, ImageAnnotation, ShapeObject, generate, write_coco

__all__ = ["CLASSES", "IMAGE_SIZE", "ImageAnnotation", "ShapeObject", "generate", "write_coco"]
