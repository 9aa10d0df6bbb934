"""Render ``builders/<name>/Dockerfile.j2`` into a Dockerfile.

Undefined variables are errors (StrictUndefined), so a template can never silently
render an empty version or path.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from edgefleet.errors import ConfigError
from edgefleet.images.builder_spec import TEMPLATE_FILE, BuilderSpec, VenvSpec


@dataclass(frozen=True)
class VenvInputs:
    """One image venv as the template sees it."""

    spec: VenvSpec
    wheelhouse: str                  # context-relative directory holding its wheels
    requirements: tuple[str, ...]    # exact pins installed with dependency checking
    no_deps: tuple[str, ...] = ()    # exact pins installed with --no-deps

    @property
    def path(self) -> str:
        return self.spec.path

    @property
    def interpreter(self) -> str:
        return self.spec.interpreter

    @property
    def pip(self) -> str:
        return f"{self.spec.path}/bin/pip"

    @property
    def python(self) -> str:
        return self.spec.python


@dataclass(frozen=True)
class RenderInputs:
    venvs: tuple[VenvInputs, ...]
    edgefleet_wheel: str             # context-relative path of the workspace's edgefleet wheel


def render_dockerfile(builder_dir: Path, spec: BuilderSpec, inputs: RenderInputs) -> str:
    template_path = builder_dir / TEMPLATE_FILE
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(builder_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,            # a Dockerfile, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shell_quote"] = shlex.quote
    runner = next(v for v in inputs.venvs if v.spec.edgefleet is not None)
    extras = runner.spec.edgefleet.extras if runner.spec.edgefleet else ()
    try:
        template = env.get_template(TEMPLATE_FILE)
        return template.render(
            spec=spec,
            versions=spec.versions,
            venvs=inputs.venvs,
            runner=runner,
            edgefleet_wheel=inputs.edgefleet_wheel,
            edgefleet_install=f"/tmp/{inputs.edgefleet_wheel}" + (f"[{','.join(extras)}]" if extras else ""),
        )
    except jinja2.TemplateNotFound:
        raise ConfigError(f"{template_path}: no such template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{template_path}:{exc.lineno}:1: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{template_path}:{_template_line(exc, template_path)}:1: {exc.message}") from None


def _template_line(exc: BaseException, template_path: Path) -> int:
    """Jinja rewrites tracebacks so template frames carry the template's file and line."""
    line = 1
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).name == template_path.name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
