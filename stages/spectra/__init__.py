"""spectra: mean power spectra of datasets and generators (the official avg_spectra.py), as a stage command.

    python -m stages.spectra stats   --source data/datasets/ffhq.zip                     # -> --mean= --std=
    python -m stages.spectra calc    --source data/datasets/ffhq.zip --dest out/data.npz --mean 112.7 --std 69.5
    python -m stages.spectra calc    --source stylegan3-r-ffhq-1024x1024 --num 70000 --dest out/sg3r.npz ...
    python -m stages.spectra heatmap out/data.npz --save out/data.png
    python -m stages.spectra slices  out/data.npz out/sg3r.npz --save out/slices.png

`analysis` holds the math as pure functions, `sources` the image streams, `plots` the figures, `commands`
the four commands, `cli` the command line.
"""
