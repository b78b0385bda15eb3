"""Where KV lives: block store backends (embedded | Mooncake) and existence look-ups."""
