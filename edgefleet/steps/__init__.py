"""Build steps: the code that produces artifacts. Same code in every backend."""
