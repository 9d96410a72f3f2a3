"""What tests and benchmarks share: ports, polling, an HTTP client, launchers for the real
processes (built with the project's own command-line builders and supervisor), keys, fakes.
Test modules import from here, never from each other."""
