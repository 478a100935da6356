"""generate: samples, class grids, style mixing, interpolation videos and projection from a trained G.

Each command is a function of a loaded generator and its config: `images.generate_images`,
`style_mixing.style_mixing`, `video.render_video`, `projector.run_projection`; `cli` is the command line.
"""
