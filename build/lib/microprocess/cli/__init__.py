"""The `microprocess` command line: commands, the progress bar, the planner and its prices."""
