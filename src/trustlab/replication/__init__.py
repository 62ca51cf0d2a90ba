"""Replication in text-conditional diffusion models: a testbed where it happens and is measured.

* :mod:`~trustlab.replication.config`: the training settings and defaults (torch-free), dual
  fusion weights included;
* :mod:`~trustlab.replication.data`: captioned image sets (emoji, or a folder + captions.jsonl);
* :mod:`~trustlab.replication.text`: MiniLM token states (offline) and a small test encoder;
* :mod:`~trustlab.replication.training`: diffusers U-Net + DDPM training with EMA and resume;
* :mod:`~trustlab.replication.sampling`: DDIM sampling with classifier-free guidance, gated
  mitigations, and the memorization scores of prompts;
* :mod:`~trustlab.replication.memorization` / :mod:`~trustlab.replication.detect`: memorized
  prompts found from the model alone (Wen et al.'s magnitude, cross-attention entropy), Wen et
  al.'s prompt optimisation and training filter, and the ``detect`` run folder;
* :mod:`~trustlab.replication.metrics` / :mod:`~trustlab.replication.quality`: replication
  (pixel, Carlini, Gu, SSCD) and quality (proxy FID, precision/recall, caption consistency);
  :mod:`~trustlab.replication.duplicates` / :mod:`~trustlab.replication.registration`: the
  training set's near-duplicate groups and the aligned copy metric;
* :mod:`~trustlab.replication.measure`: replication and quality of a run's generations, into the run folder;
  :mod:`~trustlab.replication.audit`: the same replication figures for any two folders of images;
* :mod:`~trustlab.replication.mitigations`: the training and inference mitigations;
* :mod:`~trustlab.replication.captions` / :mod:`~trustlab.replication.llm` /
  :mod:`~trustlab.replication.generality`: caption generality scores and generalized captions
  (WordNet offline, an LLM endpoint optionally), and the captions-file command;
* :mod:`~trustlab.replication.fusion`: dual fusion (image mixing and caption fusion in training);
* :mod:`~trustlab.replication.skips`: the U-Net's skips and the ITB kinds chosen on them;
  :mod:`~trustlab.replication.rau` / :mod:`~trustlab.replication.rau_analysis`: RAU-Net and
  LoyalDiffusion, and the skip and timestep analyses that place them.
"""
