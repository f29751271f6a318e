"""`avatar batch`: many render and avatar jobs from one jobs file, spread over the workers of a Ray cluster."""
