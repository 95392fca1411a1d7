"""The subcommands of ``sde-diffusion``: each module has HELP, add_arguments(parser) and run(args)."""
