"""Orchestration above the stages: each command's stage as one function (``data``, ``extract``,
``train``, ``evaluate``, ``stream``, ``serve``), the quickstart pipeline, the ablation experiment,
the live demo and cluster jobs (``submit``).

The CLI and the Python API call the same functions: paths by keyword, defaulting to the
configuration's (``<out>/data`` and so on), each returning a typed result that prints its own
summary (:func:`raymm.console.print_result`).
"""
