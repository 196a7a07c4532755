"""pytest runs docs/tutorial.ipynb (nbmake) in its quick mode: tiny models, seconds of training."""
import os

os.environ.setdefault("VITKIT_TUTORIAL_QUICK", "1")
