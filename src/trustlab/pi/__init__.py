"""Private inference: ReLU accounting, ReLU reduction (SENet, SNL, layer-drop), shallow models, secure inference."""
