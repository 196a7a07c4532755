"""One module per ``vitkit`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
