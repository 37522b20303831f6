"""`make demo` (`python -m pomp.demo OUT`): the main job end to end on the offline default model.

- `data.py`: real demo data that installs offline (emoji, Fashion-MNIST, animal silhouettes), written in the
  class-folder / split-file formats users bring (`python -m pomp.demo.data OUT` builds it alone).
- `run.py`: prepare the data, pre-train a prompt, apply it zero-shot, write the table.
"""
