"""Render the TF-TRT conversion script that runs on the Jetson.

The conversion needs TensorRT and the device's GPU, so the host only renders a
script from ``templates/jetson/tftrt_convert.py.j2``; the device runs it. The
script must stay Python 3.6 compatible (JetPack 4's system Python).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.errors import BuildError
from edgefleet.runtimes import get_runtime

TEMPLATE = get_runtime("tftrt").templates["tftrt_convert"]
SCRIPT_NAME = "tftrt_convert.py"


class TrtSettings(BaseModel):
    """TrtGraphConverter settings; the defaults are the ones that worked on a Jetson Nano (TF 1.14, TRT 5.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(default=1, ge=1)
    is_dynamic_op: bool = False
    max_workspace_size_bytes: int = Field(default=1 << 25, ge=1 << 20)
    precision_mode: Literal["FP32", "FP16"] = "FP16"
    minimum_segment_size: int = Field(default=50, ge=1)
    maximum_cached_engines: int = Field(default=1, ge=1)


def default_template() -> Path:
    """The template in the checkout this package runs from (``templates/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "templates" / TEMPLATE


def render_device_script(settings: TrtSettings, *, graph_file: str, output_nodes: list[str],
                         template: Path | None = None) -> str:
    if not output_nodes:
        raise BuildError("the TF-TRT script needs the graph's output node names (from graph.json)")
    variables: dict[str, Any] = {**settings.model_dump(), "graph_file": graph_file, "output_nodes": output_nodes}
    return render_template(template or default_template(), variables)


def render_template(template: Path, variables: Mapping[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    # Values enter the script as Python literals, never as raw text.
    env.filters["py"] = _py_literal
    try:
        return env.get_template(template.name).render(**variables)
    except jinja2.TemplateNotFound:
        raise BuildError(f"template not found: {template}") from None
    except jinja2.UndefinedError as exc:
        raise BuildError(f"template {template.name}: a variable is missing: {exc.message}") from None


def _py_literal(value: Any) -> str:
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the missing variable
    if isinstance(value, bool | int | float | str | type(None)):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    raise BuildError(f"cannot put a {type(value).__name__} into a generated script")
