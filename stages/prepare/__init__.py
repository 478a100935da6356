"""prepare: raw images (folder, ZIP, LMDB, CIFAR-10/100 archive) -> one dataset ZIP in the official layout.

Modules: `sources` (what to read, in the official order), `image_ops` (decode, normalise, crop/resize,
encode one image), `png` (deterministic PNG encoding), `destination` (atomic ZIP/folder writer),
`conversion` (the worker pool and passes), `report`, `config`, `cli`.
"""
