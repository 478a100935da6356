"""The metric engine shared by training (snapshot metrics), evaluate, export (the champion rule) and generate
(the projector's LPIPS): GAN metrics with the official names and meaning (FID, KID, precision/recall, IS, PPL,
StyleGAN3's equivariance EQ-T/EQ-R), plus distances in EfficientNet-Lite0 space (`fd_effnet*`).

    from stages.metrics.runner import compute_metrics, MetricOptions
    out = compute_metrics("runs/demo/network-snapshot-000020.safetensors", ["fid50k_full"],
                          options=MetricOptions(detector_dir="/models/detectors"))
    out["records"]["fid50k_full"]["results"]   # {'fid50k_full': 12.3}

Modules: `registry` (names -> MetricSpec), `formulas` (pure math), `detectors` (detector files: lookup,
download, checksum), `features` (real/generated feature passes, statistics cache), `ppl`, `equivariance`
(EQ-T/EQ-R), `distributed` (process split and gather), `runner` (compute, report). Not a stage: no command of
its own; `stages.evaluate` is the command around it.
"""
