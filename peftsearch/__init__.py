"""peftsearch: the command line that ties the engine (pruning/) and the service (api/, worker/, store/) together."""
