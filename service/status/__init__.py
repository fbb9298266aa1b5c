"""The live status page and its data: ``model`` (the typed snapshot), ``build`` (one snapshot),
``sources`` (the sections other processes keep), ``feed`` (live updates), ``page`` (the HTML)."""
