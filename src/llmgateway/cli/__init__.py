"""The command line: commands, rendering of tables, the demo."""
