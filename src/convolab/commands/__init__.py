"""Small CLI sub-commands that belong to no subsystem of their own."""
