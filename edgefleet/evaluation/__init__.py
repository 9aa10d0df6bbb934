"""Host-side accuracy scoring of the detections a device sends back."""
from edgefleet.evaluation.coco import score_detections

__all__ = ["score_detections"]
