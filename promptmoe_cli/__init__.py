"""The ``promptmoe`` command line: the only layer that parses arguments, prints, and
configures logging. Each module registers its commands on the parser (``register``)."""
