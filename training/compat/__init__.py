"""One module per third-party library: every private name of it the project uses and every patch, in one place."""
