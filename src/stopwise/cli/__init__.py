"""The ``stopwise`` command line: a thin layer over the library."""
