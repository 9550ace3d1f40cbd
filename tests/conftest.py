pytest_plugins = ["tests.fakes.anthropic_server"]
