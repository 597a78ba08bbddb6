"""The shipped YAML configs. A package only so that a non-editable ``pip install`` carries them
(``medsr demo`` finds ``configs/demo.yaml`` beside the installed ``pipelines`` package)."""
