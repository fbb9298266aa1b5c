"""Analysis algorithms; each subpackage exposes a pure run()."""
