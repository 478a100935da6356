"""What several stages share, written once: params loading and CLI flags (`config`), atomic file
I/O (`fileio`), the dataset reader (`dataset`), MLflow tracking (`tracking`), the error boundary of
every command (`errors`), seed lists (`seeds`) and image helpers (`images`)."""
