"""The process the runner lives in: signals as Ctrl-C, library start-up chatter, the library internals we must touch."""
