"""The `migrator` command line: one module per command family, calling the library; nothing
of the library imports from here."""
