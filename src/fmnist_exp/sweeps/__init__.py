"""Many jobs of one command: the parent run and its comparison, the pruning rule, the stored study, the launchers."""
