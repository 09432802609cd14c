"""Layer suites, peer runners and the runner behind ``convolab bench``."""
