"""Generated Python code of Tandem's public API lives in tandem.v1 (built by `make setup`)."""
