"""Find and validate recipes; resolve their files relative to the recipe folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.config.validate import did_you_mean, validate
from edgefleet.config.yamlsrc import Position, SourceMap, display_path, load_yaml
from edgefleet.errors import ConfigError
from edgefleet.recipes.model import Recipe

RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path
    # Kept so that errors found after loading (a source's fetch) still name file:line of the key.
    smap: SourceMap | None = field(default=None, compare=False, repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def position(self, *keys: str) -> Position:
        """Where a key's value is written in recipe.yaml (or the file's start, without a source map)."""
        if self.smap is None:
            return Position(self.path, 1, 1)
        return self.smap.value_at(keys) or self.smap.nearest(keys, prefer_key=False)

    def file(self, relative: str) -> Path:
        """A file the recipe names; it must exist and stay inside the recipe folder."""
        resolved = (self.folder / relative).resolve()
        if self.folder.resolve() not in resolved.parents and resolved != self.folder.resolve():
            raise ConfigError(f"{display_path(self.path)}: {relative!r} points outside the recipe folder")
        if not resolved.exists():
            raise ConfigError(f"{display_path(self.path)}: {relative!r} does not exist ({display_path(resolved)})")
        return resolved


def recipe_paths(models_dir: Path) -> dict[str, Path]:
    if not models_dir.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(models_dir.glob(f"*/{RECIPE_FILE}"))}


def load_recipe_file(path: Path) -> LoadedRecipe:
    data, smap = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)}:1:1: a recipe must be a mapping of keys")
    data.setdefault("name", path.parent.name)
    return LoadedRecipe(validate(Recipe, data, smap, what=f"recipe {display_path(path)}"), path, smap)


def load_recipe(models_dir: Path, name: str) -> LoadedRecipe:
    paths = recipe_paths(models_dir)
    if name not in paths:
        known = ", ".join(sorted(paths)) or "none"
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, paths)}; known models: {known}")
    return load_recipe_file(paths[name])
