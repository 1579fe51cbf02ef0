"""CIFAR-10 CNN Lab's core: data, model, training, runs, evaluation and inference.

Pure Python and PyTorch; the Streamlit pages import it, never the other way round.
"""
