"""Reference outputs of the authors' own code, and what the tests need to rebuild them."""
