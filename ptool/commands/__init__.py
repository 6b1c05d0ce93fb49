"""One module per subcommand: options -> core call -> render. No heavy import at module level."""
