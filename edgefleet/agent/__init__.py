"""The on-device benchmark agent. ``efagent/`` is the package that runs on the device (Python 3.6+,
stdlib + numpy; its docstring holds the CONTRACT with the host), ``launcher.py`` becomes its zipapp's
``__main__`` and ``bundle.py`` (host side) packs both into ``edgefleet-agent.pyz``."""
