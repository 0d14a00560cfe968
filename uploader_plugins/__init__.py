"""The built-in plugins: ordinary plugins, loaded through the same entry points as any other."""
