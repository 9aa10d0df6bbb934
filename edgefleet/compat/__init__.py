"""Runtime compatibility: can the TFLite runtime a device pins load an artifact this host built?

A model converted with today's TensorFlow may use operator versions an older
runtime cannot load ("Didn't find op for builtin opcode 'X' version 'N'"). The
check loads the artifact in the exact runtime version the profile pins, in a
throwaway venv of this host's Python (so the host's TensorFlow never matters):

- ``runtimes``: which distributions count as TFLite runtimes and which pin a profile makes (pure, for the planner);
- ``venv``: the venv per runtime+version, cached under the workspace state dir, created atomically under a lock;
- ``load``: the load itself, in a subprocess of that venv, and the runtime's error text parsed into reasons.
"""
