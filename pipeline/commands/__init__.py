"""One module per `detcrop` subcommand."""
