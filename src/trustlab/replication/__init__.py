"""Replication in text-conditional diffusion models: a testbed where it happens and is measured.

* :mod:`~trustlab.replication.data`: captioned image sets (emoji, or a folder + captions.jsonl);
* :mod:`~trustlab.replication.text`: MiniLM token states (offline) and a small test encoder;
* :mod:`~trustlab.replication.training`: diffusers U-Net + DDPM training with EMA and resume;
* :mod:`~trustlab.replication.sampling`: DDIM sampling with classifier-free guidance;
* :mod:`~trustlab.replication.metrics` / :mod:`~trustlab.replication.quality`: replication
  (pixel, Carlini, Gu, SSCD) and quality (proxy FID, precision/recall, caption consistency);
* :mod:`~trustlab.replication.mitigations`: the standard training and inference mitigations.
"""
