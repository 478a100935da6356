"""convert: any readable network file -> a native code-free snapshot (`converter`, `cli`)."""
