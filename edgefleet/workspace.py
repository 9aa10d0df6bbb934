"""The workspace: the repository is also the user's workspace. Paths and settings live here."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from edgefleet.config.validate import validate
from edgefleet.config.yamlsrc import load_yaml
from edgefleet.errors import ConfigError

SETTINGS_FILE = "edgefleet.yaml"
ENGINE_SCHEMES = ("ssh", "tcp", "unix", "http", "https", "npipe")


def check_engine_url(url: str) -> str:
    """A Docker engine address, as ``docker -H`` takes it."""
    scheme = urlsplit(url).scheme
    if scheme not in ENGINE_SCHEMES or not url.partition("://")[2]:
        raise ValueError(f"{url!r} is not a Docker engine address: expected ssh://user@host, tcp://host:port or "
                         "unix:///path/to/docker.sock")
    return url


EngineUrl = Annotated[str, AfterValidator(check_engine_url)]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "docker"] = Field("local", description="Where build steps run.")
    docker_host: list[EngineUrl] | None = Field(
        None, description="Engine(s) builds run on, e.g. ssh://user@buildbox or a list of them; default DOCKER_HOST.")
    default_model: str = "shapes"
    # The model the demo deploys to a target instead of default_model (jetson-nano: a model whose TF-TRT
    # rewrites have something to rewrite).
    demo_models: dict[str, str] = Field(default_factory=dict)
    jobs: int = Field(2, ge=1, le=64)
    step_timeout_s: float = Field(3600.0, gt=0)

    @field_validator("docker_host", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @property
    def docker_hosts(self) -> tuple[str, ...]:
        """The engines builds run on, in order; empty: DOCKER_HOST, else the local socket."""
        return tuple(self.docker_host or ())




@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    def with_docker_hosts(self, urls: Sequence[str]) -> Workspace:
        """This workspace building on ``urls`` (``--docker-host``) instead of edgefleet.yaml's docker_host."""
        if not urls:
            return self
        for url in urls:
            try:
                check_engine_url(url)
            except ValueError as exc:
                raise ConfigError(f"--docker-host: {exc}") from None
        return replace(self, settings=self.settings.model_copy(update={"docker_host": list(urls)}))

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def builders_dir(self) -> Path:
        return self.root / "builders"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def state_dir(self) -> Path:
        return self.root / ".edgefleet"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def downloads_dir(self) -> Path:
        return self.state_dir / "downloads"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


def find_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` with a targets/ folder or an edgefleet.yaml."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / SETTINGS_FILE).is_file() or (folder / "targets").is_dir():
            return folder
    raise ConfigError(f"no edgefleet workspace at or above {start}: expected a targets/ folder or {SETTINGS_FILE}")


def open_workspace(start: Path | None = None) -> Workspace:
    root = find_root(start or Path.cwd())
    settings_path = root / SETTINGS_FILE
    if settings_path.is_file():
        data, smap = load_yaml(settings_path)
        settings = validate(Settings, data, smap, what=f"settings {SETTINGS_FILE}")
    else:
        settings = Settings()
    return Workspace(root, settings)
