"""Find, merge (``extends:``) and validate target profiles."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config.validate import did_you_mean, validate
from edgefleet.config.yamlsrc import SourceMap, display_path, load_yaml
from edgefleet.errors import ConfigError
from edgefleet.profiles.model import Profile

BUILTIN_DIR = Path(__file__).with_name("builtin")
MAX_EXTENDS_DEPTH = 8


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile
    path: Path
    chain: tuple[Path, ...]  # the file and the bases it extends, nearest first


def profile_paths(targets_dir: Path) -> dict[str, Path]:
    """Target name -> file. Files starting with '_' are bases, not targets. Built-ins fill gaps."""
    found = {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml")) if not p.stem.startswith("_")}
    if targets_dir.is_dir():
        found.update({p.stem: p for p in sorted(targets_dir.glob("*.yaml")) if not p.stem.startswith("_")})
    return found


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return override


def _load_raw(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], SourceMap, tuple[Path, ...]]:
    data, smap = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)}:1:1: a profile must be a mapping of keys")
    chain = (path,)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, smap, chain
    where = smap.value_at(("extends",)) or smap.nearest(("extends",))
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{where}: extends must name another profile file, e.g. '_base'")
    stem = base_name.removeprefix("builtin:")
    # A name, never a path: a shared profile must not pull in files from elsewhere on the disk.
    if not stem or any(c in stem for c in "/\\\0") or stem.startswith("."):
        raise ConfigError(f"{where}: extends {base_name!r} must name a profile beside this one (e.g. '_base') "
                          f"or a built-in one ('builtin:local'), not a path")
    # "builtin:NAME" names a profile embedded in edgefleet; a plain name looks beside the file first.
    if base_name.startswith("builtin:"):
        candidates = [BUILTIN_DIR / f"{base_name.removeprefix('builtin:')}.yaml"]
    else:
        candidates = [path.parent / f"{base_name}.yaml", BUILTIN_DIR / f"{base_name}.yaml"]
    base_path = next((p for p in candidates if p.is_file()), None)
    if base_path is None:
        names = [p.stem for p in path.parent.glob("*.yaml")] + [p.stem for p in BUILTIN_DIR.glob("*.yaml")]
        raise ConfigError(f"{where}: extends {base_name!r}: no such profile{did_you_mean(base_name, names)}")
    if base_path.resolve() in [p.resolve() for p in seen + (path,)]:
        cycle = " -> ".join(display_path(p) for p in seen + (path, base_path))
        raise ConfigError(f"{where}: extends forms a cycle: {cycle}")
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{where}: extends nests deeper than {MAX_EXTENDS_DEPTH} levels")
    base_data, base_map, base_chain = _load_raw(base_path, seen + (path,))
    return _deep_merge(base_data, data), smap.merged_over(base_map), chain + base_chain


def load_profile_file(path: Path) -> LoadedProfile:
    data, smap, chain = _load_raw(path, ())
    data.setdefault("name", path.stem)
    if data["name"] != path.stem:
        where = smap.value_at(("name",)) or smap.nearest(("name",))
        raise ConfigError(f"{where}: name {data['name']!r} must match the file name {path.stem!r}")
    return LoadedProfile(validate(Profile, data, smap, what=f"profile {display_path(path)}"), path, chain)


def load_profile(targets_dir: Path, name: str) -> LoadedProfile:
    paths = profile_paths(targets_dir)
    if name not in paths:
        known = ", ".join(sorted(paths)) or "none"
        raise ConfigError(f"unknown target {name!r}{did_you_mean(name, paths)}; known targets: {known}")
    return load_profile_file(paths[name])


def load_all_profiles(targets_dir: Path) -> tuple[list[LoadedProfile], list[ConfigError]]:
    """Every profile, collecting errors instead of stopping at the first bad file."""
    loaded: list[LoadedProfile] = []
    errors: list[ConfigError] = []
    for name, path in profile_paths(targets_dir).items():
        try:
            loaded.append(load_profile_file(path))
        except ConfigError as exc:
            errors.append(exc)
    return loaded, errors
