"""What people type: one module per command (run, evaluate, predict, report, bench, ui) and their command-line plumbing."""
