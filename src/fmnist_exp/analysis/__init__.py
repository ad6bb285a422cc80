"""What a person compares: the objective and run tables, seed-noise statistics, per-class reports, figures."""
