# The notebook harness (tests/nbharness.py) runs every notebook against its own database.
pytest_plugins = ["tests.nbharness"]
