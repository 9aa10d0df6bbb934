"""The agent zipapp's ``__main__`` (bundle.py copies it in as __main__.py). Runs on the device: Python >= 3.6.

zipimport compiles a zipapp's modules at every start and keeps no bytecode: compiling the agent's package
costs ~10 ms of CPU on a desktop core and several times that on a board, paid by `start`, `run` and every
`status` poll. So the first start unpacks the package next to the archive (ARCHIVE.d/<content hash>/),
where Python keeps its usual __pycache__. Where that cannot be written, it is imported from the archive.
"""
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import types
import zipfile

PACKAGE = "efagent"  # the agent's package: the archive holds it and this file, nothing else


def unpacked(archive):
    # type: (str) -> str
    """The folder holding this archive's package, unpacked whole (made once per archive content)."""
    with open(archive, "rb") as handle:
        key = hashlib.sha256(handle.read()).hexdigest()[:16]
    parent = archive + ".d"
    target = os.path.join(parent, key)
    marker = os.path.join(target, PACKAGE, "__init__.py")
    if os.path.isfile(marker):
        return target
    if not os.path.isdir(parent):
        os.makedirs(parent)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                if name.startswith(PACKAGE + "/") and name.endswith(".py"):
                    bundle.extract(name, staging)
        os.rename(staging, target)  # whole or not at all
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isfile(marker):  # else a concurrent start unpacked it
            raise
    return target


class _OnFirstUse(types.ModuleType):
    """numpy (a fifth of a second here, more on a board) imported when first touched, not at start-up:
    `start` and `status` never use it, and deploy waits for them and for `run` to take its run lock.
    `run` loads it right after that, before any cell, so nothing timed changes."""

    def __getattr__(self, name):
        del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))
        return getattr(module, name)


def main():
    # type: () -> int
    archive = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(archive):
        try:
            sys.path.insert(0, unpacked(archive))
        except (OSError, zipfile.BadZipFile):
            pass  # read-only or full: compiled from the archive at every start, as zipimport does
    if sys.argv[1:2] in (["start"], ["status"], ["run"]):
        sys.modules["numpy"] = _OnFirstUse("numpy")
    cli = importlib.import_module(PACKAGE + ".cli")  # found where the lines above put it
    return cli.main(self_command=[sys.executable, archive])


if __name__ == "__main__":
    sys.exit(main())
