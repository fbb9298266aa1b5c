"""scantide control plane: domain types, settings, the enqueue use case, task backends, API, CLI."""
