"""Pipelines: registered chains of algorithm steps (``service.catalog.pipeline``) and their runs.

``store`` keeps versions and runs, ``plan`` decides a run's next steps (pure), ``targets`` opens the
compute targets steps run on, ``runs`` starts and retries runs, ``moves`` carries step inputs
between targets' storage. The ``conductor`` daemon drives runs with them.
"""
