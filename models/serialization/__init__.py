"""Networks to and from files: native code-free snapshots (`snapshot`), the restricted importers of
official PyTorch pickles (`official_pickle`) and TensorFlow pickles (`tf_pickle`), the one entry point
`loading.load_network`, and atomic writes (`fileio`)."""
