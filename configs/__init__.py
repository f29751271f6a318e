"""Named presets, `<command>/<name>.toml`, installed as the package data of `avatar.configs`."""
