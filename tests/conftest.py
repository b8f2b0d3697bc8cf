pytest_plugins = ["testbed.pytest_git"]
