"""Model recipes: where a model comes from, what it eats, and how its output is read."""
