"""Training: one loop (`loop.py`) and its optimizer/schedule pieces (`optim.py`)."""
